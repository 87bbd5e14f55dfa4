// The catalog: everything osfarmd knows, in one `level` database under the data dir. Its LevelDB
// lock is also the daemon's: a second osfarmd on the same data dir cannot open it.
//
//   images     id → ImageInfo (JSON)
//   names      name → id
//   manifests  root (hex) → canonical manifest encoding
//   locator    hash ‖ volume key → block index   (which local volume holds a block)
//   jobs       id → JobInfo (JSON)
// An image, its name, its manifest and its locator entries are written in one atomic batch, so a
// crash never leaves a listed image without its index, nor an index without its image.

import { Level } from 'level'
import { DAEMON_ALREADY_RUNNING, IMAGE_NOT_FOUND, AMBIGUOUS_ID } from '../../protocol/errors.js'
import type { ImageInfo, JobInfo } from '../../protocol/rpc.js'
import { decodeManifest, encodeManifest, isZeroSlot, type Manifest } from '../blocks/manifest.js'
import { HASH_BYTES } from '../blocks/hash.js'

type Json = Level<string, any>

export interface BlockLocation {
  volume: string
  index: number
}

export class Catalog {
  readonly #db: Json
  readonly images
  readonly names
  readonly manifests
  readonly locator
  readonly jobs

  private constructor (db: Json) {
    this.#db = db
    this.images = db.sublevel<string, ImageInfo>('images', { valueEncoding: 'json' })
    this.names = db.sublevel<string, string>('names', { valueEncoding: 'utf8' })
    this.manifests = db.sublevel<string, Buffer>('manifests', { valueEncoding: 'buffer' })
    this.locator = db.sublevel<Buffer, string>('locator', { keyEncoding: 'buffer', valueEncoding: 'utf8' })
    this.jobs = db.sublevel<string, JobInfo>('jobs', { valueEncoding: 'json' })
  }

  static async open (dir: string): Promise<Catalog> {
    const db: Json = new Level(dir, { valueEncoding: 'json' })
    try {
      await db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') throw DAEMON_ALREADY_RUNNING(`the catalog in ${dir} is locked by another osfarmd`)
      throw err
    }
    return new Catalog(db)
  }

  // A sublevel for another service's own records (fleet, builds, ...).
  sublevel<V> (name: string) {
    return this.#db.sublevel<string, V>(name, { valueEncoding: 'json' })
  }

  async close (): Promise<void> {
    await this.#db.close()
  }

  async listImages (): Promise<ImageInfo[]> {
    return this.images.values().all()
  }

  // Finds an image by id, name, or a unique prefix of its id or root (at least 4 characters).
  async findImage (ref: string): Promise<ImageInfo> {
    const byId = await this.images.get(ref)
    if (byId) return byId
    const idOfName = await this.names.get(ref)
    if (idOfName) {
      const byName = await this.images.get(idOfName)
      if (byName) return byName
    }
    if (ref.length >= 4 && /^[0-9a-f]+$/.test(ref)) {
      const matches = (await this.listImages()).filter(i => i.id.startsWith(ref) || i.root.startsWith(ref))
      if (matches.length === 1) return matches[0]!
      if (matches.length > 1) throw AMBIGUOUS_ID(`"${ref}" matches ${matches.length} images`)
    }
    throw IMAGE_NOT_FOUND(`no image "${ref}"`)
  }

  async manifest (root: string): Promise<Manifest | undefined> {
    const data = await this.manifests.get(root)
    return data ? decodeManifest(data) : undefined
  }

  // Registers an image with its manifest and locator entries, atomically.
  async putImage (image: ImageInfo, manifest: Manifest): Promise<void> {
    const batch = this.#db.batch()
    batch.put(image.id, image, { sublevel: this.images })
    batch.put(image.name, image.id, { sublevel: this.names })
    batch.put(image.root, encodeManifest(manifest), { sublevel: this.manifests })
    forEachLocatorKey(manifest, image.volume, (key, index) => batch.put(key, String(index), { sublevel: this.locator }))
    await batch.write()
  }

  async deleteImage (image: ImageInfo): Promise<void> {
    const manifest = await this.manifest(image.root)
    const others = (await this.listImages()).filter(i => i.id !== image.id)
    const batch = this.#db.batch()
    batch.del(image.id, { sublevel: this.images })
    if ((await this.names.get(image.name)) === image.id) batch.del(image.name, { sublevel: this.names })
    if (!others.some(i => i.root === image.root)) batch.del(image.root, { sublevel: this.manifests })
    if (manifest && !others.some(i => i.volume === image.volume)) {
      forEachLocatorKey(manifest, image.volume, key => batch.del(key, { sublevel: this.locator }))
    }
    await batch.write()
  }

  // Local volumes that hold a block with this hash.
  async locate (blockHash: Uint8Array, limit = 4): Promise<BlockLocation[]> {
    const prefix = Buffer.from(blockHash)
    const upper = Buffer.concat([prefix, Buffer.from([0xff])])
    const out: BlockLocation[] = []
    for await (const [key, value] of this.locator.iterator({ gte: prefix, lt: upper, limit })) {
      out.push({ volume: key.subarray(HASH_BYTES).toString('utf8'), index: Number(value) })
    }
    return out
  }

  async putJob (job: JobInfo): Promise<void> {
    await this.jobs.put(job.id, job)
  }

  async listJobs (): Promise<JobInfo[]> {
    return this.jobs.values().all()
  }
}

function forEachLocatorKey (m: Manifest, volume: string, fn: (key: Buffer, index: number) => void): void {
  const vol = Buffer.from(volume, 'utf8')
  const count = m.hashes.length / HASH_BYTES
  for (let i = 0; i < count; i++) {
    if (isZeroSlot(m.hashes, i)) continue
    const key = Buffer.allocUnsafe(HASH_BYTES + vol.length)
    m.hashes.copy(key, 0, i * HASH_BYTES, (i + 1) * HASH_BYTES)
    vol.copy(key, HASH_BYTES)
    fn(key, i)
  }
}

