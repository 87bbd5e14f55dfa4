// Pre-stage records: one JSON file per pre-stage (source or target) and one manifest per point,
// under <dataDir>/prestage, each written to a temp file and renamed into place.

import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { NOT_FOUND } from '../../protocol/errors.js'
import type { PrestageInfo, PrestagePoint, PrestageState, PrestageTargetReport } from '../../protocol/rpc.js'
import { decodeManifest, encodeManifest, type Manifest } from '../blocks/manifest.js'
import type { LayerStore } from '../store/layer-store.js'
import type { Logger } from '../log.js'

export interface Record {
  id: string
  role: 'source' | 'target'
  state: PrestageState
  disk: string
  // Source: what the disk is. An image point is the image's own volume, never removed here.
  diskKind?: 'file' | 'device' | 'image'
  diskPath?: string
  image?: string
  peer: string
  peerHost: string
  base: { name: string, root: string, volume: string } | null
  size: number
  points: PrestagePoint[]
  target: PrestageTargetReport | null
  // Target: the point being fetched.
  pending?: { seq: number, root: string, base?: string, job?: string }
  createdAt: string
  error?: string
}

export class PrestageBook {
  readonly #dir: string
  readonly #records = new Map<string, Record>()

  constructor (dir: string) {
    this.#dir = dir
  }

  // Reads every record; `unreadable` when one could not be read (its points would look unnamed).
  async load (log: Logger): Promise<{ unreadable: boolean }> {
    await fs.mkdir(this.#dir, { recursive: true, mode: 0o700 })
    let unreadable = false
    for (const name of await fs.readdir(this.#dir)) {
      if (!name.endsWith('.json')) continue
      try {
        const rec = JSON.parse(await fs.readFile(path.join(this.#dir, name), 'utf8')) as Record
        this.#records.set(rec.id, rec)
      } catch (err) {
        log.warn('unreadable prestage record', { file: name, error: (err as Error).message })
        unreadable = true
      }
    }
    return { unreadable }
  }

  all (): Record[] {
    return [...this.#records.values()]
  }

  byId (id: string): Record | undefined {
    return this.#records.get(id)
  }

  // By id or a prefix of at least 4 characters.
  get (id: string): Record {
    const rec = this.#records.get(id) ?? [...this.#records.values()].find(r => id.length >= 4 && r.id.startsWith(id))
    if (!rec) throw NOT_FOUND(`no prestage "${id}"`)
    return rec
  }

  add (rec: Record): void {
    this.#records.set(rec.id, rec)
  }

  async save (rec: Record): Promise<void> {
    this.#records.set(rec.id, rec)
    const file = path.join(this.#dir, `${rec.id}.json`)
    const tmp = `${file}.${randomBytes(3).toString('hex')}.tmp`
    await fs.writeFile(tmp, JSON.stringify(rec, null, 2), { mode: 0o600 })
    await fs.rename(tmp, file)
  }

  async manifest (id: string, seq: number): Promise<Manifest> {
    return decodeManifest(await fs.readFile(this.#manifestPath(id, seq)))
  }

  async writeManifest (id: string, seq: number, m: Manifest): Promise<void> {
    const file = this.#manifestPath(id, seq)
    const tmp = `${file}.${randomBytes(3).toString('hex')}.tmp`
    await fs.writeFile(tmp, encodeManifest(m), { mode: 0o600 })
    await fs.rename(tmp, file)
  }

  async removeManifest (id: string, seq: number): Promise<void> {
    await fs.rm(this.#manifestPath(id, seq), { force: true })
  }

  #manifestPath (id: string, seq: number): string {
    return path.join(this.#dir, `${id}.${seq}.manifest`)
  }
}

// What the API shows of a record.
export async function prestageInfo (store: Pick<LayerStore, 'stat'>, rec: Record): Promise<PrestageInfo> {
  const last = rec.points[rec.points.length - 1]
  const vol = rec.role === 'target' && last ? await store.stat(last.volume) : undefined
  return {
    id: rec.id,
    role: rec.role,
    state: rec.state,
    disk: rec.disk,
    peer: rec.peer,
    peerHost: rec.peerHost,
    base: rec.base ? { name: rec.base.name, root: rec.base.root } : null,
    size: rec.size,
    points: rec.points,
    target: rec.role === 'source' ? rec.target : null,
    ...(vol ? { volume: vol.key, path: vol.path } : {}),
    createdAt: rec.createdAt,
    ...(rec.error ? { error: rec.error } : {})
  }
}
