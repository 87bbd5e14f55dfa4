// The file backend: each volume is a raw image file. A snapshot is a reflink clone where the
// filesystem can share extents (btrfs, xfs) and a sparse copy otherwise, so holes stay holes.
// Active volumes are `<key>.active`, committed ones `<key>.img` with mode 0444.

import fs from 'node:fs/promises'
import path from 'node:path'
import { runOk } from '../../tools/run.js'
import { VOLUME_EXISTS, VOLUME_NOT_FOUND, VOLUME_READ_ONLY, BAD_PARAMS, IO_ERROR } from '../../../protocol/errors.js'
import { VOLUME_KEY, type LayerStore, type PrepareOptions, type StoreUsage, type VolumeInfo } from '../layer-store.js'

const ACTIVE = '.active'
const COMMITTED = '.img'

export interface FileStoreOptions {
  dir: string
}

export async function createFileStore (options: FileStoreOptions): Promise<LayerStore> {
  await fs.mkdir(options.dir, { recursive: true, mode: 0o700 })
  return new FileStore(options.dir)
}

class FileStore implements LayerStore {
  readonly backend = 'file'
  readonly #dir: string

  constructor (dir: string) {
    this.#dir = dir
  }

  #file (key: string, suffix: string): string {
    if (!VOLUME_KEY.test(key)) throw BAD_PARAMS(`bad volume key ${JSON.stringify(key)}`)
    return path.join(this.#dir, key + suffix)
  }

  async prepare (key: string, options: PrepareOptions): Promise<VolumeInfo> {
    const target = this.#file(key, ACTIVE)
    if (await this.stat(key)) throw VOLUME_EXISTS(`volume ${key} exists`)
    if (options.parent !== undefined) {
      const parent = await this.stat(options.parent)
      if (!parent) throw VOLUME_NOT_FOUND(`parent volume ${options.parent} not found`)
      if (parent.kind !== 'committed') throw BAD_PARAMS(`parent volume ${options.parent} is not committed`)
      await cloneFile(parent.path, target)
      await fs.chmod(target, 0o600)
      if (options.size !== undefined && options.size > parent.size) await fs.truncate(target, options.size)
    } else {
      if (options.size === undefined || !Number.isSafeInteger(options.size) || options.size < 0) {
        throw BAD_PARAMS('an empty volume needs a size')
      }
      const fh = await fs.open(target, 'wx', 0o600)
      try { await fh.truncate(options.size) } finally { await fh.close() }
    }
    return this.#info(key, 'active')
  }

  async commit (key: string): Promise<VolumeInfo> {
    const active = this.#file(key, ACTIVE)
    const committed = this.#file(key, COMMITTED)
    const fh = await fs.open(active, 'r+').catch(err => {
      if (err.code === 'ENOENT') throw VOLUME_NOT_FOUND(`no active volume ${key}`)
      throw err
    })
    try { await fh.sync() } finally { await fh.close() }
    await fs.chmod(active, 0o444)
    await fs.rename(active, committed)
    await syncDir(this.#dir)
    return this.#info(key, 'committed')
  }

  async remove (key: string): Promise<void> {
    const info = await this.stat(key)
    if (!info) throw VOLUME_NOT_FOUND(`volume ${key} not found`)
    await fs.rm(info.path, { force: true })
  }

  async stat (key: string): Promise<VolumeInfo | undefined> {
    for (const kind of ['committed', 'active'] as const) {
      const info = await this.#info(key, kind).catch(err => {
        if (err.code === 'ENOENT') return undefined
        throw err
      })
      if (info) return info
    }
    return undefined
  }

  async list (): Promise<VolumeInfo[]> {
    const out: VolumeInfo[] = []
    for (const name of await fs.readdir(this.#dir)) {
      const kind = name.endsWith(COMMITTED) ? 'committed' : name.endsWith(ACTIVE) ? 'active' : undefined
      if (!kind) continue
      const key = name.slice(0, -(kind === 'committed' ? COMMITTED : ACTIVE).length)
      if (!VOLUME_KEY.test(key)) continue
      const info = await this.#info(key, kind).catch(() => undefined)
      if (info) out.push(info)
    }
    return out
  }

  async usage (): Promise<StoreUsage> {
    const volumes = await this.list()
    const fsStat = await fs.statfs(this.#dir)
    return {
      backend: this.backend,
      volumes: volumes.length,
      bytesUsed: volumes.reduce((n, v) => n + v.allocated, 0),
      bytesFree: fsStat.bavail * fsStat.bsize
    }
  }

  async recover (): Promise<string[]> {
    const orphans = (await this.list()).filter(v => v.kind === 'active')
    for (const v of orphans) await fs.rm(v.path, { force: true })
    return orphans.map(v => v.key)
  }

  async close (): Promise<void> {}

  async #info (key: string, kind: 'active' | 'committed'): Promise<VolumeInfo> {
    const file = this.#file(key, kind === 'active' ? ACTIVE : COMMITTED)
    const st = await fs.stat(file)
    return { key, kind, size: st.size, allocated: st.blocks * 512, path: file }
  }
}

// Refuses to write a committed volume (the only other way in is through its path).
export async function openWritable (info: VolumeInfo): Promise<fs.FileHandle> {
  if (info.kind !== 'active') throw VOLUME_READ_ONLY(`volume ${info.key} is committed`)
  return fs.open(info.path, 'r+')
}

// Reflink where the filesystem shares extents, else a copy that keeps holes as holes (GNU cp
// finds the source's holes with SEEK_HOLE and writes runs of zeros as holes).
async function cloneFile (from: string, to: string): Promise<void> {
  try {
    await runOk('cp', ['--reflink=auto', '--sparse=always', '--no-preserve=all', '--', from, to])
  } catch (err) {
    await fs.rm(to, { force: true })
    throw IO_ERROR(`snapshot of ${path.basename(from)} failed: ${(err as Error).message}`)
  }
}

async function syncDir (dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r')
  try { await fh.sync() } finally { await fh.close() }
}
