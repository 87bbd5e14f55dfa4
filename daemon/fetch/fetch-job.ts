// One fetch job, phase by phase: the manifest (from the journal when resuming, else from a
// holder), the target (resumed, or a snapshot of the best local volume), the transfer (local
// copies and remote blocks at once, each received block checked before it is written), and
// registration (or, for pre-staging, a committed volume the caller owns).

import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import type { FetchResult, ImageInfo } from '../../protocol/rpc.js'
import type { Advert } from '../../protocol/wire.js'
import { blockCount, decodeManifest, encodeManifest, zeroBlockCount, zeroSlots, type Manifest } from '../blocks/manifest.js'
import type { LocalBlocks } from '../blocks/local-blocks.js'
import { parseAdvert, serializeAdvert, type AdvertBook } from '../adverts/advert-book.js'
import type { Catalog } from '../catalog/catalog.js'
import type { FleetSwarm } from '../fleet/fleet-swarm.js'
import { parseKey } from '../fleet/fleet-config.js'
import { RateLimiter } from '../fleet/rate-limiter.js'
import type { ImageService } from '../images/images.js'
import type { JobContext } from '../jobs/jobs.js'
import type { LayerStore, VolumeInfo } from '../store/layer-store.js'
import type { Logger } from '../log.js'
import { chooseParent, planFetch, type FetchPlan } from './fetch-planner.js'
import { emptyStats, Fetcher, type FetchStats } from './fetcher.js'
import { HaveBroadcaster } from './have-broadcaster.js'
import type { FetchState, Journal } from './journal.js'
import { fetchManifest } from './manifest-source.js'
import type { Progress } from './progress.js'

export const FETCH_VOLUME_PREFIX = 'fetch-'

export interface FetchOptions {
  from?: string
  // Bytes per second (raw) the fetch asks peers for at most (0 or absent: no limit).
  limit?: number
  name?: string
  peerWaitMs?: number
  // 'background' (seeding): the job yields to users' jobs and peers serve it after others.
  priority?: 'user' | 'background'
  // false: commit the volume but do not register it as an image (pre-staging); the result's
  // `volume` names it.
  register?: boolean
  // A root whose manifest this host holds: ask holders for the wanted manifest as a delta.
  manifestBase?: string
}

export interface FetchJobDeps {
  swarm: FleetSwarm
  self: string
  catalog: Catalog
  store: LayerStore
  images: ImageService
  adverts: AdvertBook
  local: LocalBlocks
  log: Logger
}

export interface FetchJobSpec {
  root: string
  name: string
  advert: Advert | undefined
  opts: FetchOptions
  journal: Journal
  peerWaitMs: number
}

interface Target {
  state: FetchState
  volume: VolumeInfo
  progress: Progress
  plan: FetchPlan
}

export class FetchJob {
  readonly #d: FetchJobDeps
  readonly #s: FetchJobSpec
  readonly #ctx: JobContext
  readonly #root: Buffer
  readonly #started = performance.now()
  #mark = performance.now()
  #advert: Advert | undefined
  #stats!: FetchStats

  constructor (deps: FetchJobDeps, spec: FetchJobSpec, ctx: JobContext) {
    this.#d = deps
    this.#s = spec
    this.#ctx = ctx
    this.#root = Buffer.from(spec.root, 'hex')
    this.#advert = spec.advert
  }

  async run (): Promise<FetchResult> {
    const { swarm } = this.#d
    const { opts, journal } = this.#s
    await journal.create()
    const stopLooking = swarm.lookFor(this.#root)
    // Hosts fetching the same image in the background share out what to ask whole holders
    // for: tell them at once that this host is one of them.
    if (opts.priority === 'background' || (await journal.readState())?.background) swarm.broadcastHave(this.#root, Buffer.alloc(0))
    try {
      const manifest = await this.#manifest()
      const target = await this.#target(manifest)
      await this.#transfer(manifest, target)
      this.#phase('transfer')
      return await this.#register(manifest, target.state)
    } finally {
      stopLooking()
    }
  }

  #phase (name: string): void {
    const now = performance.now()
    this.#stats.phases[name] = Math.round(now - this.#mark)
    this.#mark = now
  }

  // 1. The manifest: from disk when resuming, else from a holder, checked against the root.
  async #manifest (): Promise<Manifest> {
    this.#ctx.progress('manifest', 0, 1, 'steps')
    let manifest: Manifest
    let manifestBytes = 0
    const saved = await this.#s.journal.readManifest()
    if (saved) {
      manifest = decodeManifest(saved, this.#root)
    } else {
      const { opts } = this.#s
      const got = await fetchManifest(this.#d, this.#root, { ...(opts.from ? { from: opts.from } : {}), ...(opts.manifestBase !== undefined ? { manifestBase: opts.manifestBase } : {}), waitMs: this.#s.peerWaitMs, signal: this.#ctx.signal })
      manifest = got.manifest
      manifestBytes = got.wireBytes
      await this.#s.journal.writeManifest(encodeManifest(manifest))
    }
    this.#stats = emptyStats(manifest)
    this.#stats.manifestBytes = manifestBytes
    this.#stats.zeroBlocks = zeroBlockCount(manifest)
    this.#phase('manifest')
    return manifest
  }

  // 2. The target: resumed, or a snapshot of the best local volume (or empty).
  async #target (manifest: Manifest): Promise<Target> {
    const { journal, opts, root: rootHex, name } = this.#s
    const { store, local, log } = this.#d
    const stats = this.#stats
    const count = blockCount(manifest.size, manifest.blockSize)
    const zero = zeroSlots(manifest.hashes)
    let state = await journal.readState()
    const progress = await journal.openProgress(count)
    let vol = state ? await store.stat(state.volume) : undefined
    let plan: FetchPlan
    if (state && vol?.kind === 'active') {
      for (let i = 0; i < count; i++) if (!zero[i] && progress.has(i)) stats.resumed++
      plan = planFetch(manifest, undefined, (hashes, o) => local.locate(hashes, o), progress.bits)
      log.info('fetch resumed', { root: rootHex, blocks: stats.resumed })
    } else {
      if (vol) await store.remove(vol.key).catch(() => {})
      progress.bits.fill(0)
      const candidates = local.volumes().filter(v => v.complete)
      const parent = chooseParent(manifest, candidates.map(c => ({ volume: c.key, manifest: c.manifest })))
      const volume = `${FETCH_VOLUME_PREFIX}${rootHex.slice(0, 16)}-${randomBytes(3).toString('hex')}`
      const advert = this.#advert
      state = { root: rootHex, name, volume, parent: parent?.volume, ...(advert ? { advert: serializeAdvert(advert) } : {}), ...(opts.register === false ? { register: false } : {}), ...(opts.priority === 'background' ? { background: true } : {}) }
      await journal.writeState(state)
      vol = await store.prepare(volume, parent ? { parent: parent.volume, size: manifest.size } : { size: manifest.size })
      if (vol.size > manifest.size) {
        await fs.truncate(vol.path, manifest.size)
        vol = { ...vol, size: manifest.size }
      }
      plan = planFetch(manifest, parent, (hashes, o) => local.locate(hashes, o))
      // What the snapshot already holds, and zero blocks that are holes already, are done.
      for (const i of plan.inPlace) progress.set(i)
      const over = new Set(plan.zeroOverParent)
      for (let i = 0; i < count; i++) if (zero[i] && !over.has(i)) progress.set(i)
      await progress.save()
      stats.inPlace = plan.inPlace.length
      log.info('fetch planned', { root: rootHex, parent: parent?.volume ?? '-', inPlace: plan.inPlace.length, local: plan.local.length, remote: plan.remoteBlocks, zeroOverParent: plan.zeroOverParent.length })
    }
    if (state.advert && !this.#advert) this.#advert = parseAdvert(state.advert)
    // The target serves what it has from now on.
    local.addPartial(state.volume, vol.path, manifest)
    const doneNow: number[] = []
    for (let i = 0; i < count; i++) if (!zero[i] && progress.has(i)) doneNow.push(i)
    local.addBlocks(state.volume, doneNow)
    this.#phase('plan')
    return { state, volume: vol, progress, plan }
  }

  // 3–4. Local copies and remote blocks, at once. Received blocks are hashed before they are
  // written; local ones (the snapshot's, copies and clones, what a resumed fetch wrote) come
  // from committed volumes or from blocks this fetch checked, so none is read back.
  async #transfer (manifest: Manifest, t: Target): Promise<void> {
    const { opts } = this.#s
    const ctx = this.#ctx
    const stats = this.#stats
    const background = t.state.background ?? opts.priority === 'background'
    const haves = new HaveBroadcaster(this.#d.swarm, this.#root, t.progress.bits)
    // Peers learn what it has already (in place, zero, resumed); then every so often what it
    // wrote, instead of the whole bitfield at each flush.
    if (background) haves.all()
    const fetcher = new Fetcher({
      manifest,
      volume: t.state.volume,
      path: t.volume.path,
      plan: t.plan,
      progress: t.progress,
      pool: this.#d.swarm,
      local: this.#d.local,
      stats,
      from: opts.from ? new Set([parseKey(opts.from).toString('hex')]) : undefined,
      signal: ctx.signal,
      peerWaitMs: opts.peerWaitMs,
      onFlush: bits => { if (!background) haves.flushed(bits) },
      onProgress: (done, total) => ctx.progress(`fetch ${(stats.rate / 1e6).toFixed(1)} MB/s from ${Object.keys(stats.peers).length} peer(s)`, done, total, 'blocks'),
      background,
      ...(opts.limit ? { limiter: new RateLimiter(opts.limit) } : {}),
      ...(background ? { self: this.#d.self } : {}),
      ...(background ? { onWritten: (indices: number[]) => haves.written(indices) } : {})
    })
    try {
      await fetcher.run()
    } finally {
      haves.stop()
    }
  }

  // 5. Commit, and register as an image (or hand the volume to the caller: pre-staging).
  async #register (manifest: Manifest, state: FetchState): Promise<FetchResult> {
    const { journal, opts, root: rootHex } = this.#s
    const { store, local, log, images } = this.#d
    const stats = this.#stats
    const count = blockCount(manifest.size, manifest.blockSize)
    this.#ctx.progress('register', 0, 1, 'steps')
    const committed = await store.commit(state.volume)
    local.movePath(state.volume, committed.path)
    if (state.register === false || opts.register === false) {
      // Pre-staging: the caller owns the volume; it serves blocks by hash but is no image.
      await journal.remove()
      this.#phase('register')
      stats.elapsedMs = Math.round(performance.now() - this.#started)
      log.info('fetch done', { root: rootHex, ms: stats.elapsedMs, inPlace: stats.inPlace, local: stats.copiedLocal, received: stats.received, wire: stats.wireBytes, volume: state.volume })
      const image: ImageInfo = {
        id: '', name: state.name, size: manifest.size, root: rootHex, blockSize: manifest.blockSize, blocks: count,
        zeroBlocks: zeroBlockCount(manifest), createdAt: new Date().toISOString(), volume: state.volume, origin: 'fetch', layers: []
      }
      return { image, stats, alreadyPresent: false, volume: state.volume }
    }
    // The builder may have relabelled the image since the fetch began.
    const advert = this.#advert
    const newest = advert && (this.#d.swarm.newest(advert) ?? advert)
    if (newest) await this.#d.adverts.put(newest)
    // Registration tells the fleet service (subscribe), which serves and advertises it whole.
    // A versioned advert: the image is that version of its name here too (NAME@N).
    const version = newest?.version ? { version: newest.version, ...(newest.specKey ? { specKey: newest.specKey.toString('hex') } : {}) } : undefined
    const image = await images.register({ volume: state.volume, name: await this.#freeName(state.name, rootHex, version?.version), origin: 'fetch', manifest, ctx: this.#ctx, ...(newest?.labels?.length ? { labels: newest.labels } : {}), ...(version ? { version } : {}) })
    await journal.remove()
    this.#phase('register')
    stats.elapsedMs = Math.round(performance.now() - this.#started)
    log.info('fetch done', { root: rootHex, ms: stats.elapsedMs, inPlace: stats.inPlace, local: stats.copiedLocal, received: stats.received, wire: stats.wireBytes, bad: stats.badBlocks })
    return { image, stats, alreadyPresent: false }
  }

  async #freeName (name: string, rootHex: string, version?: number): Promise<string> {
    const { images } = this.#d
    if (version !== undefined && !(await images.versions(name)).some(i => i.version === version || i.version === undefined)) return name
    try {
      await images.checkName(name)
      return name
    } catch {
      return `${name}@${rootHex.slice(0, 12)}`
    }
  }
}
