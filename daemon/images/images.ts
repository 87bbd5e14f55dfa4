// Images: committed volumes with a manifest and a name. Import copies a raw file into a new
// volume (holes stay holes), indexes it and registers it; export writes raw or qcow2; verify
// re-hashes the volume against its manifest. Builds and fetches register their volumes here too.

import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { BAD_PARAMS, IMAGE_NOT_FOUND, NAME_IN_USE, VERIFY_FAILED } from '../../protocol/errors.js'
import type { ExportFormat, ExportResult, ImageInfo, JobInfo, StreamJob, VerifyResult } from '../../protocol/rpc.js'
import type { FileHandle } from 'node:fs/promises'
import type { StreamRegistry } from '../rpc/streams.js'
import { receiveStream, sendStream } from './image-streams.js'
import { DataRanges } from '../blocks/data-ranges.js'
import type { Catalog } from '../catalog/catalog.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { LayerStore } from '../store/layer-store.js'
import type { BlockHasher } from '../blocks/block-hasher.js'
import { blockCount, zeroBlockCount, type Manifest } from '../blocks/manifest.js'
import { HASH_BYTES, toHex } from '../blocks/hash.js'
import { copyNonZero } from './block-copy.js'
import { createExportTarget, openSource, writeError, type Source } from './host-files.js'
import { checkLabels } from './labels.js'
import * as qemuImg from '../tools/qemu-img.js'
import type { Logger } from '../log.js'

const IMAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$/
const MAX_BAD_BLOCKS_LISTED = 1000
// The largest image a caller may stream in: 16 TiB.
const MAX_IMAGE_BYTES = 2 ** 44

// Told of every change to the catalog's images.
export interface ImageListener {
  registered (image: ImageInfo, manifest: Manifest): void
  removed (image: ImageInfo): void
  relabelled? (image: ImageInfo): void
}

export interface RegisterOptions {
  volume: string
  name: string
  origin: ImageInfo['origin']
  layers?: string[]
  // A manifest already verified against the volume's bytes (a fetch); else the volume is indexed.
  manifest?: Manifest
  ctx?: JobContext
  // "key=value" labels (import and build --label, a spec's labels; a fetched image keeps its advert's).
  labels?: string[]
  // A version of a name (builds, and fetches whose advert names one), with what it was built from.
  version?: Pick<ImageInfo, 'version' | 'specKey' | 'inputs' | 'steps'>
}

export class ImageService {
  readonly #catalog: Catalog
  readonly #store: LayerStore
  readonly #jobs: JobManager
  readonly #hasher: BlockHasher
  readonly #blockSize: number
  readonly #log: Logger
  readonly #streams: StreamRegistry
  // Converted exports on their way to a caller (emptied at start).
  readonly #scratchDir: string
  // Names claimed by imports still running, so two cannot race for one name.
  readonly #claimed = new Set<string>()
  // Told of every registered, removed and relabelled image (the fleet serves and advertises them).
  readonly #listeners: ImageListener[] = []

  subscribe (listener: ImageListener): void {
    this.#listeners.push(listener)
  }

  // Root's export targets are never here (the data dir, the daemon's sockets).
  readonly #hostPaths: { dataDir: string, protectedPaths: string[] }

  constructor (deps: { catalog: Catalog, store: LayerStore, jobs: JobManager, hasher: BlockHasher, blockSize: number, log: Logger, streams: StreamRegistry, scratchDir: string, hostPaths?: { dataDir: string, protectedPaths: string[] } }) {
    this.#hostPaths = deps.hostPaths ?? { dataDir: path.dirname(deps.scratchDir), protectedPaths: [] }
    this.#streams = deps.streams
    this.#scratchDir = deps.scratchDir
    this.#catalog = deps.catalog
    this.#store = deps.store
    this.#jobs = deps.jobs
    this.#hasher = deps.hasher
    this.#blockSize = deps.blockSize
    this.#log = deps.log
  }

  list (): Promise<ImageInfo[]> {
    return this.#catalog.listImages().then(list => list.sort((a, b) => a.createdAt.localeCompare(b.createdAt)))
  }

  get (ref: string): Promise<ImageInfo> {
    return this.#catalog.findImage(ref)
  }

  async checkName (name: string): Promise<void> {
    if (!IMAGE_NAME.test(name)) throw BAD_PARAMS(`image name must match ${IMAGE_NAME.source}, got ${JSON.stringify(name)}`)
    if (this.#claimed.has(name) || await this.#catalog.names.get(name)) throw NAME_IN_USE(`an image named "${name}" exists`)
  }

  async import (source: string, name: string, labels?: string[]): Promise<JobInfo> {
    if (!path.isAbsolute(source)) throw BAD_PARAMS('the source path must be absolute')
    await this.checkName(name)
    if (labels) checkLabels(labels)
    // Opened once, here: what the job copies is what was checked.
    const src = await openSource(source, { field: 'path', allowBlockDevice: true, refuseEmpty: true })
    this.#claimed.add(name)
    try {
      return this.#jobs.start('import', name, async ctx => {
        try {
          return await this.#importJob(src, name, ctx, labels)
        } finally {
          this.#claimed.delete(name)
          await src.handle.close().catch(() => {})
        }
      })
    } catch (err) {
      this.#claimed.delete(name)
      await src.handle.close().catch(() => {})
      throw err
    }
  }

  async #importJob (src: Source, name: string, ctx: JobContext, labels?: string[]): Promise<ImageInfo> {
    return this.#ingest(name, src.size, ctx, labels, async (to, ranges) => {
      await copyNonZero(src.handle, to, {
        ranges,
        size: src.size,
        blockSize: this.#blockSize,
        signal: ctx.signal,
        onProgress: (done, total) => ctx.progress('copy', done, total),
        source: src.path,
        target: `the store volume for ${name}`,
        full: 'STORE_FULL'
      })
    })
  }

  // image.upload: an import whose bytes the caller streams (protocol/stream.ts).
  async upload (name: string, size: number, labels?: string[]): Promise<StreamJob> {
    await this.checkName(name)
    if (labels) checkLabels(labels)
    if (!Number.isSafeInteger(size) || size <= 0) throw BAD_PARAMS('size must be a positive whole number of bytes')
    if (size > MAX_IMAGE_BYTES) throw BAD_PARAMS(`size must be at most ${MAX_IMAGE_BYTES} bytes`)
    const { token, attached } = this.#streams.open()
    this.#claimed.add(name)
    try {
      const job = this.#jobs.start('import', name, async ctx => {
        try {
          return await this.#ingest(name, size, ctx, labels, (to, ranges) => receiveStream(attached, to, size, ctx, ranges))
        } finally {
          this.#claimed.delete(name)
        }
      })
      return { job, stream: token }
    } catch (err) {
      this.#claimed.delete(name)
      throw err
    }
  }

  // A new volume of `size` bytes (all zeros), filled by `fill`, which says where it put data;
  // only that is read back to be indexed. Then committed and registered.
  async #ingest (name: string, size: number, ctx: JobContext, labels: string[] | undefined, fill: (to: FileHandle, ranges: DataRanges) => Promise<void>): Promise<ImageInfo> {
    const ranges = new DataRanges()
    const volume = `img-${randomBytes(8).toString('hex')}`
    const info = await this.#store.prepare(volume, { size })
    try {
      const to = await fs.open(info.path, 'r+')
      try {
        await fill(to, ranges)
        await to.sync().catch(err => { throw writeError(err, info.path, 'STORE_FULL') })
      } finally {
        await to.close()
      }
      // Indexed while still active: a crash before the commit leaves only an active volume,
      // which the next start removes.
      const manifest = await this.#hasher.indexFile(info.path, {
        blockSize: this.#blockSize,
        size,
        ranges: ranges.aligned(this.#blockSize, size),
        signal: ctx.signal,
        onProgress: (done, total) => ctx.progress('index', done, total)
      })
      await this.#store.commit(volume)
      return await this.register({ volume, name, origin: 'import', manifest, ctx, ...(labels?.length ? { labels } : {}) })
    } catch (err) {
      await this.#store.remove(volume).catch(() => {})
      throw err
    }
  }

  // A committed volume's manifest (a build compares it with the newest version before registering).
  async index (volume: string, ctx?: JobContext): Promise<Manifest> {
    const vol = await this.#store.stat(volume)
    if (!vol || vol.kind !== 'committed') throw BAD_PARAMS(`volume ${volume} is not committed`)
    return this.#hasher.indexFile(vol.path, { blockSize: this.#blockSize, size: vol.size, signal: ctx?.signal, onProgress: (done, total) => ctx?.progress('index', done, total) })
  }

  // Indexes (unless given a manifest) and catalogs a committed volume as an image.
  async register (opts: RegisterOptions): Promise<ImageInfo> {
    const vol = await this.#store.stat(opts.volume)
    if (!vol || vol.kind !== 'committed') throw BAD_PARAMS(`volume ${opts.volume} is not committed`)
    const manifest = opts.manifest ?? await this.#hasher.indexFile(vol.path, {
      blockSize: this.#blockSize,
      size: vol.size,
      signal: opts.ctx?.signal,
      onProgress: (done, total) => opts.ctx?.progress('index', done, total)
    })
    const image: ImageInfo = {
      id: randomBytes(8).toString('hex'),
      name: opts.name,
      size: manifest.size,
      root: toHex(manifest.root),
      blockSize: manifest.blockSize,
      blocks: blockCount(manifest.size, manifest.blockSize),
      zeroBlocks: zeroBlockCount(manifest),
      createdAt: new Date().toISOString(),
      volume: opts.volume,
      origin: opts.origin,
      layers: opts.layers ?? [],
      ...(opts.labels?.length ? { labels: opts.labels } : {}),
      ...(opts.version ?? {})
    }
    await this.#catalog.putImage(image, manifest)
    this.#log.info('image registered', { image: image.id, name: image.name, root: image.root, size: image.size })
    for (const l of this.#listeners) l.registered(image, manifest)
    return image
  }

  async export (ref: string, target: string, format: 'raw' | 'qcow2'): Promise<JobInfo> {
    if (!path.isAbsolute(target)) throw BAD_PARAMS('the target path must be absolute')
    if (format !== 'raw' && format !== 'qcow2') throw BAD_PARAMS(`format must be raw or qcow2, got ${JSON.stringify(format)}`)
    const image = await this.get(ref)
    const vol = await this.#volumeOf(image)
    // Claim the temporary file now, so an unwritable target fails the call, not a job later;
    // only a regular file (or nothing) outside the data dir is ever replaced.
    const out = await createExportTarget(target, this.#hostPaths)
    const fh = out.handle
    return this.#jobs.start('export', image.name, async ctx => {
      try {
        if (format === 'raw') {
          await fh.truncate(image.size).catch(err => { throw writeError(err, out.path, 'NO_SPACE') })
          const from = await fs.open(vol.path, 'r')
          try {
            await copyNonZero(from, fh, { size: image.size, blockSize: image.blockSize, signal: ctx.signal, onProgress: (d, t) => ctx.progress('copy', d, t), source: vol.path, target: out.path, full: 'NO_SPACE' })
          } finally {
            await from.close()
          }
        } else {
          await fh.close()
          ctx.progress('convert', 0, image.size)
          await qemuImg.convert(vol.path, 'raw', out.tmpPath, 'qcow2', ctx.signal)
          ctx.progress('convert', image.size, image.size)
        }
        await out.commit()
        const bytes = (await fs.stat(out.path)).size
        return { id: image.id, path: target, format, bytes } satisfies ExportResult
      } catch (err) {
        await out.abort()
        throw err
      }
    })
  }

  // image.download: the image streamed to the caller, raw (holes never sent) or converted first
  // into a private scratch file that is unlinked once open.
  async download (ref: string, format: ExportFormat): Promise<StreamJob> {
    const image = await this.get(ref)
    const vol = await this.#volumeOf(image)
    const { token, attached } = this.#streams.open()
    const job = this.#jobs.start('export', image.name, async ctx => {
      ctx.progress('convert', 0, image.size)
      const from = await this.openAs(image, vol.path, format, ctx.signal)
      try {
        const bytes = await sendStream(attached, from, ctx)
        return { id: image.id, path: '-', format, bytes } satisfies ExportResult
      } finally {
        await from.close()
      }
    })
    return { job, stream: token }
  }

  // The image's bytes in `format`, open for reading: raw is its (read-only) volume; another
  // format is converted into a private scratch file, unlinked once open, so it goes when closed.
  async openAs (image: ImageInfo, volumePath: string, format: ExportFormat, signal?: AbortSignal): Promise<FileHandle> {
    if (format === 'raw') return fs.open(volumePath, 'r')
    await fs.mkdir(this.#scratchDir, { recursive: true, mode: 0o700 })
    const file = path.join(this.#scratchDir, `${image.id}-${randomBytes(6).toString('hex')}.${format}`)
    try {
      await qemuImg.convert(volumePath, 'raw', file, format, signal)
      return await fs.open(file, 'r')
    } finally {
      await fs.rm(file, { force: true })
    }
  }

  async verify (ref: string): Promise<JobInfo> {
    const image = await this.get(ref)
    const vol = await this.#volumeOf(image)
    return this.#jobs.start('verify', image.name, async ctx => {
      const expected = await this.#catalog.manifest(image.root)
      if (!expected) throw VERIFY_FAILED(`the manifest of ${image.name} is missing`)
      const actual = await this.#hasher.indexFile(vol.path, {
        blockSize: expected.blockSize,
        size: expected.size,
        signal: ctx.signal,
        onProgress: (d, t) => ctx.progress('hash', d, t)
      })
      const badBlocks: number[] = []
      const count = blockCount(expected.size, expected.blockSize)
      for (let i = 0; i < count && badBlocks.length < MAX_BAD_BLOCKS_LISTED; i++) {
        if (expected.hashes.compare(actual.hashes, i * HASH_BYTES, (i + 1) * HASH_BYTES, i * HASH_BYTES, (i + 1) * HASH_BYTES) !== 0) badBlocks.push(i)
      }
      const result: VerifyResult = { id: image.id, ok: badBlocks.length === 0, blocks: count, badBlocks }
      if (!result.ok) this.#log.warn('image failed verification', { image: image.id, badBlocks: badBlocks.length })
      return result
    })
  }

  // The versions of a name held here, oldest first.
  versions (name: string): Promise<ImageInfo[]> {
    return this.#catalog.versions(name)
  }

  // Rewrites an image's record (not its name, content or labels): e.g. another key that gave its content.
  async update (image: ImageInfo): Promise<void> {
    await this.#catalog.updateImage(image)
  }

  // Sets an image's labels in the catalog. Its advert, which carries them to the fleet, is the
  // transfer service's (TransferService.relabel).
  async setLabels (image: ImageInfo, labels: string[]): Promise<ImageInfo> {
    const updated: ImageInfo = { ...image, labels }
    if (!labels.length) delete updated.labels
    await this.#catalog.updateImage(updated)
    this.#log.info('image relabelled', { image: image.id, name: image.name, labels: labels.join(',') || '-' })
    for (const l of this.#listeners) l.relabelled?.(updated)
    return updated
  }

  async remove (ref: string): Promise<{ id: string, removed: boolean }> {
    const image = await this.get(ref)
    // Catalog first: a crash in between leaves an unlisted volume, never a listed broken image.
    await this.#catalog.deleteImage(image)
    const sharers = (await this.#catalog.listImages()).filter(i => i.volume === image.volume)
    if (sharers.length === 0 && image.origin !== 'build') await this.#store.remove(image.volume).catch(() => {})
    this.#log.info('image removed', { image: image.id, name: image.name })
    for (const l of this.#listeners) l.removed(image)
    return { id: image.id, removed: true }
  }

  async #volumeOf (image: ImageInfo) {
    const vol = await this.#store.stat(image.volume)
    if (!vol) throw IMAGE_NOT_FOUND(`the volume of image ${image.name} is missing from the store`)
    return vol
  }
}
