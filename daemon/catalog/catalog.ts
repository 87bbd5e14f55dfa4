// The catalog: everything osfarmd knows, in one `level` database under the data dir. Its LevelDB
// lock is also the daemon's: a second osfarmd on the same data dir cannot open it.
//
//   images     id → ImageInfo (JSON)
//   names      name → id
//   locator    0x01 ‖ hash ‖ volume key → block index (u48)   (which local volume holds a block)
//              raw binary keys outside the sublevels: a big image has hundreds of thousands
//   jobs       id → JobInfo (JSON)
//   pending    volume key → root, while an image's locator entries are being written
// An image is listed only once its manifest and locator entries are all written. Manifests are
// blobs (16 MiB for a 2 GiB image at 4 KiB blocks): they live as files, `manifests/<root>`, written
// and synced before the records that name them.

import fs from 'node:fs/promises'
import path from 'node:path'
import { Level } from 'level'
import { DAEMON_ALREADY_RUNNING, IMAGE_NOT_FOUND, AMBIGUOUS_ID } from '../../protocol/errors.js'
import type { ImageInfo, JobInfo } from '../../protocol/rpc.js'
import { decodeManifest, encodeManifest, isZeroSlot, type Manifest } from '../blocks/manifest.js'
import { HASH_BYTES, toHex } from '../blocks/hash.js'

// The root database speaks raw buffers (the locator's keys); sublevels name their encodings.
type Db = Level<Buffer, Buffer>

// Locator entries written per batch: bounds the memory a big image's registration takes.
const LOCATOR_BATCH = 4096
// Sublevel keys start with '!'; locator keys with this byte.
const LOCATOR_PREFIX = 0x01
// A block index, big-endian: 2^48 blocks is far beyond any volume.
const LOCATOR_VALUE_BYTES = 6

export interface BlockLocation {
  volume: string
  index: number
}

export class Catalog {
  readonly #db: Db
  readonly images
  readonly names
  readonly jobs
  readonly pending

  readonly #manifestDir: string

  private constructor (db: Db, manifestDir: string) {
    this.#db = db
    this.#manifestDir = manifestDir
    this.images = db.sublevel<string, ImageInfo>('images', { keyEncoding: 'utf8', valueEncoding: 'json' })
    this.names = db.sublevel<string, string>('names', { keyEncoding: 'utf8', valueEncoding: 'utf8' })
    this.jobs = db.sublevel<string, JobInfo>('jobs', { keyEncoding: 'utf8', valueEncoding: 'json' })
    this.pending = db.sublevel<string, string>('pending', { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  }

  // Opens (creating) the catalog under a daemon's data dir.
  static async open (dataDir: string): Promise<Catalog> {
    const dir = path.join(dataDir, 'catalog')
    const manifestDir = path.join(dataDir, 'manifests')
    await fs.mkdir(manifestDir, { recursive: true, mode: 0o700 })
    const db: Db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' })
    try {
      await db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') throw DAEMON_ALREADY_RUNNING(`the catalog in ${dir} is locked by another osfarmd`)
      throw err
    }
    return new Catalog(db, manifestDir)
  }

  // A sublevel for another service's own records (fleet, builds, ...).
  sublevel<V> (name: string) {
    return this.#db.sublevel<string, V>(name, { keyEncoding: 'utf8', valueEncoding: 'json' })
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
    if (!/^[0-9a-f]{64}$/.test(root)) return undefined
    const data = await fs.readFile(path.join(this.#manifestDir, root)).catch(err => {
      if (err.code === 'ENOENT') return undefined
      throw err
    })
    return data ? decodeManifest(data) : undefined
  }

  async #writeManifest (manifest: Manifest): Promise<void> {
    const file = path.join(this.#manifestDir, toHex(manifest.root))
    if (await fs.stat(file).then(() => true, () => false)) return
    const tmp = `${file}.tmp-${process.pid}`
    const fh = await fs.open(tmp, 'w', 0o600)
    try {
      await fh.writeFile(encodeManifest(manifest))
      await fh.sync()
    } finally {
      await fh.close()
    }
    await fs.rename(tmp, file)
  }

  async #dropManifestUnlessUsed (root: string): Promise<void> {
    if ((await this.listImages()).some(i => i.root === root)) return
    await fs.rm(path.join(this.#manifestDir, root), { force: true })
  }

  // Registers an image. The locator entries of a big image are many (one per non-zero block), so
  // they go in bounded batches under a `pending` marker; the image, its name and the marker's
  // removal then land in one atomic batch. recoverPending() undoes what a crash left between.
  async putImage (image: ImageInfo, manifest: Manifest): Promise<void> {
    await this.#writeManifest(manifest)
    await this.pending.put(image.volume, image.root)
    await this.#forLocatorKeys(manifest, image.volume, (batch, key, value) => batch.put(key, value))
    await this.#db.batch()
      .put(image.id, image, { sublevel: this.images })
      .put(image.name, image.id, { sublevel: this.names })
      .del(image.volume, { sublevel: this.pending })
      .write()
  }

  // Removes the locator entries and manifests of registrations a crash interrupted.
  async recoverPending (): Promise<string[]> {
    const volumes: string[] = []
    const images = await this.listImages()
    for await (const [volume, root] of this.pending.iterator()) {
      const manifest = await this.manifest(root)
      if (manifest && !images.some(i => i.volume === volume)) {
        await this.#forLocatorKeys(manifest, volume, (batch, key) => batch.del(key))
      }
      await this.pending.del(volume)
      await this.#dropManifestUnlessUsed(root)
      volumes.push(volume)
    }
    for (const name of await fs.readdir(this.#manifestDir)) {
      if (name.includes('.tmp-')) await fs.rm(path.join(this.#manifestDir, name), { force: true })
    }
    return volumes
  }

  async deleteImage (image: ImageInfo): Promise<void> {
    const manifest = await this.manifest(image.root)
    const others = (await this.listImages()).filter(i => i.id !== image.id)
    const batch = this.#db.batch()
    batch.del(image.id, { sublevel: this.images })
    if ((await this.names.get(image.name)) === image.id) batch.del(image.name, { sublevel: this.names })
    await batch.write()
    await this.#dropManifestUnlessUsed(image.root)
    if (manifest && !others.some(i => i.volume === image.volume)) {
      await this.#forLocatorKeys(manifest, image.volume, (b, key) => b.del(key))
    }
  }

  // Calls `fn` for each locator key of a volume, writing the batches LOCATOR_BATCH entries at a time.
  // Keys and values are views into one buffer per batch (level copies them as they are added).
  async #forLocatorKeys (m: Manifest, volume: string, fn: (batch: ReturnType<Db['batch']>, key: Buffer, value: Buffer) => void): Promise<void> {
    const vol = Buffer.from(volume, 'utf8')
    const keyBytes = 1 + HASH_BYTES + vol.length
    const entryBytes = keyBytes + LOCATOR_VALUE_BYTES
    const count = m.hashes.length / HASH_BYTES
    let batch = this.#db.batch()
    let scratch = Buffer.allocUnsafe(LOCATOR_BATCH * entryBytes)
    let o = 0
    for (let i = 0; i < count; i++) {
      if (isZeroSlot(m.hashes, i)) continue
      scratch[o] = LOCATOR_PREFIX
      m.hashes.copy(scratch, o + 1, i * HASH_BYTES, (i + 1) * HASH_BYTES)
      vol.copy(scratch, o + 1 + HASH_BYTES)
      scratch.writeUIntBE(i, o + keyBytes, LOCATOR_VALUE_BYTES)
      fn(batch, scratch.subarray(o, o + keyBytes), scratch.subarray(o + keyBytes, o + entryBytes))
      o += entryBytes
      if (batch.length >= LOCATOR_BATCH) {
        await batch.write()
        batch = this.#db.batch()
        scratch = Buffer.allocUnsafe(LOCATOR_BATCH * entryBytes)
        o = 0
      }
    }
    await batch.write()
  }


  // Local volumes that hold a block with this hash.
  async locate (blockHash: Uint8Array, limit = 4): Promise<BlockLocation[]> {
    const prefix = Buffer.concat([Buffer.from([LOCATOR_PREFIX]), blockHash])
    const upper = Buffer.concat([prefix, Buffer.from([0xff])])
    const out: BlockLocation[] = []
    for await (const [key, value] of this.#db.iterator({ gte: prefix, lt: upper, limit })) {
      out.push({ volume: key.subarray(1 + HASH_BYTES).toString('utf8'), index: value.readUIntBE(0, LOCATOR_VALUE_BYTES) })
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
