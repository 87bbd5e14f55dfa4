// A fetch's journal: what survives a crash so that it resumes. One directory per root under
// <dataDir>/transfers holds state.json (the target volume, the name, the advert, the kind of
// fetch), the manifest, and the progress bitfield (progress.ts).

import fs from 'node:fs/promises'
import path from 'node:path'
import type { SerializedAdvert } from '../adverts/advert-book.js'
import { Progress } from './progress.js'

export interface FetchState {
  root: string
  name: string
  volume: string
  parent?: string
  advert?: SerializedAdvert
  // Appended: a fetch that is not registered as an image (pre-staging), background work.
  register?: boolean
  background?: boolean
}

export class Journal {
  readonly dir: string

  constructor (stateDir: string, rootHex: string) {
    this.dir = path.join(stateDir, rootHex)
  }

  // Roots with a journal under `stateDir`.
  static async roots (stateDir: string): Promise<string[]> {
    return await fs.readdir(stateDir).catch(() => [] as string[])
  }

  async create (): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 })
  }

  async readState (): Promise<FetchState | undefined> {
    try {
      return JSON.parse(await fs.readFile(path.join(this.dir, 'state.json'), 'utf8'))
    } catch {
      return undefined
    }
  }

  async writeState (state: FetchState): Promise<void> {
    const file = path.join(this.dir, 'state.json')
    await fs.writeFile(`${file}.tmp`, JSON.stringify(state))
    await fs.rename(`${file}.tmp`, file)
  }

  async readManifest (): Promise<Buffer | undefined> {
    return await fs.readFile(path.join(this.dir, 'manifest')).catch(() => undefined)
  }

  async writeManifest (encoded: Buffer): Promise<void> {
    await fs.writeFile(path.join(this.dir, 'manifest'), encoded, { mode: 0o600 })
  }

  openProgress (count: number): Promise<Progress> {
    return Progress.open(path.join(this.dir, 'progress'), count)
  }

  async remove (): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true })
  }
}
