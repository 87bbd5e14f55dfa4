// The catalog: everything osfarmd knows, in one `level` database under the data dir. Its LevelDB
// lock is also the daemon's: a second osfarmd on the same data dir cannot open it.
//
//   images     id → ImageInfo (JSON)
//   names      name → id of its newest version (images of one name built from one spec are
//              its versions: ImageInfo.version; `NAME@N` finds version N)
//   jobs       id → JobInfo (JSON)
// Manifests are blobs (16 MiB for a 2 GiB image at 4 KiB blocks): they live as files,
// `manifests/<root>`, written and synced before the record that names them; an image and its
// name land in one atomic batch. The block locator (which volume holds a hash) is built in
// memory from the manifests (daemon/blocks/local-blocks.ts).

import fs from 'node:fs/promises'
import path from 'node:path'
import { Level } from 'level'
import { DAEMON_ALREADY_RUNNING, IMAGE_NOT_FOUND, AMBIGUOUS_ID } from '../../protocol/errors.js'
import type { ImageInfo, JobInfo } from '../../protocol/rpc.js'
import { decodeManifest, encodeManifest, type Manifest } from '../blocks/manifest.js'
import { toHex } from '../blocks/hash.js'

type Db = Level<string, unknown>

export class Catalog {
  readonly #db: Db
  readonly images
  readonly names
  readonly jobs

  readonly #manifestDir: string

  private constructor (db: Db, manifestDir: string) {
    this.#db = db
    this.#manifestDir = manifestDir
    this.images = db.sublevel<string, ImageInfo>('images', { valueEncoding: 'json' })
    this.names = db.sublevel<string, string>('names', { valueEncoding: 'utf8' })
    this.jobs = db.sublevel<string, JobInfo>('jobs', { valueEncoding: 'json' })
  }

  // Opens (creating) the catalog under a daemon's data dir.
  static async open (dataDir: string): Promise<Catalog> {
    const dir = path.join(dataDir, 'catalog')
    const manifestDir = path.join(dataDir, 'manifests')
    await fs.mkdir(manifestDir, { recursive: true, mode: 0o700 })
    const db: Db = new Level<string, unknown>(dir, { valueEncoding: 'json' })
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
    return this.#db.sublevel<string, V>(name, { valueEncoding: 'json' })
  }

  async close (): Promise<void> {
    await this.#db.close()
  }

  async listImages (): Promise<ImageInfo[]> {
    return this.images.values().all()
  }

  // Finds an image by id, name (its newest version), NAME@N (version N), or a unique prefix of
  // its id or root (at least 4 characters).
  async findImage (ref: string): Promise<ImageInfo> {
    const byId = await this.images.get(ref)
    if (byId) return byId
    const versioned = /^(.+)@(\d{1,9})$/.exec(ref)
    if (versioned) {
      const v = (await this.listImages()).find(i => i.name === versioned[1] && i.version === Number(versioned[2]))
      if (v) return v
    }
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

  // Registers an image: its manifest file first, then the image and its name atomically. The
  // name goes to the newest version (an older one fetched later leaves it where it is).
  async putImage (image: ImageInfo, manifest: Manifest): Promise<void> {
    await this.#writeManifest(manifest)
    const holder = await this.names.get(image.name)
    const current = holder ? await this.images.get(holder) : undefined
    const takesName = !current || (image.version ?? 0) >= (current.version ?? 0)
    const batch = this.#db.batch().put(image.id, image, { sublevel: this.images })
    if (takesName) batch.put(image.name, image.id, { sublevel: this.names })
    await batch.write()
  }

  // The versions of a name held here, oldest first.
  async versions (name: string): Promise<ImageInfo[]> {
    return (await this.listImages()).filter(i => i.name === name).sort((a, b) => (a.version ?? 0) - (b.version ?? 0) || a.createdAt.localeCompare(b.createdAt))
  }

  // Rewrites an image's record (its name and manifest unchanged).
  async updateImage (image: ImageInfo): Promise<void> {
    await this.images.put(image.id, image)
  }

  // Removes manifest files no image names: left by a crash between a manifest and its record.
  async sweepManifests (): Promise<string[]> {
    const roots = new Set((await this.listImages()).map(i => i.root))
    const removed: string[] = []
    for (const name of await fs.readdir(this.#manifestDir)) {
      if (roots.has(name)) continue
      await fs.rm(path.join(this.#manifestDir, name), { force: true })
      removed.push(name)
    }
    return removed
  }

  async deleteImage (image: ImageInfo): Promise<void> {
    const batch = this.#db.batch()
    batch.del(image.id, { sublevel: this.images })
    if ((await this.names.get(image.name)) === image.id) {
      // The name passes to the newest version left.
      const next = (await this.versions(image.name)).filter(i => i.id !== image.id).at(-1)
      if (next) batch.put(image.name, next.id, { sublevel: this.names })
      else batch.del(image.name, { sublevel: this.names })
    }
    await batch.write()
    await this.#dropManifestUnlessUsed(image.root)
  }

  async putJob (job: JobInfo): Promise<void> {
    await this.jobs.put(job.id, job)
  }

  async listJobs (): Promise<JobInfo[]> {
    return this.jobs.values().all()
  }
}
