// Pre-staging a VM's disk on the host it will migrate to. On the source, `start` takes a
// consistent point of the disk, indexes it (only what may differ from the image it came from)
// and offers it to the target alone: a targeted advert and a Stage message. The target fetches
// it like any image, into a volume it does not register: its own blocks (the image, earlier
// points) cost nothing, the rest comes from the source (and the image from any holder). `sync`
// takes the next point, indexes only what changed since the last one, and the target fetches
// that delta (the manifest too goes as a delta) onto a snapshot of its last copy. Each Stage
// ends when the target reports the point held, byte-identical (verified against its root).
//
// Records live in <dataDir>/prestage/<id>.json, point manifests beside them. The source keeps
// the newest point (and the one before it while a sync runs); so does the target.

import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { BAD_PARAMS, FLEET_NOT_CONFIGURED, JOB_CANCELLED, NO_PEERS, NOT_FOUND, OsfarmError } from '../../protocol/errors.js'
import type { FetchResult, ImageInfo, JobInfo, PrestageInfo, PrestagePoint, PrestageStartParams, PrestageTargetReport, TransferStats } from '../../protocol/rpc.js'
import type { Stage, StageStatus } from '../../protocol/wire.js'
import type { BlockHasher } from '../blocks/block-hasher.js'
import type { Manifest } from '../blocks/manifest.js'
import type { Catalog } from '../catalog/catalog.js'
import type { ImageService } from '../images/images.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { LayerStore } from '../store/layer-store.js'
import type { FleetSwarm } from '../fleet/fleet-swarm.js'
import type { PeerSession } from '../fleet/peer-session.js'
import { parseKey } from '../fleet/fleet-config.js'
import type { FleetService } from '../fleet/fleet-service.js'
import { PrestageBook, prestageInfo, type Record } from './prestage-book.js'
import { REPORT_TIMEOUT_MS, TargetReports } from './target-reports.js'
import type { AdvertBook } from '../adverts/advert-book.js'
import type { FetchService } from '../fetch/fetch-service.js'
import type { Logger } from '../log.js'
import { PRESTAGE_LABEL } from '../seed/seed-service.js'
import { capturePoint, indexPoint, openDisk, sweepPoints, type Disk } from './point.js'

// The source gives up on a target that reports nothing for this long.
const REPORT_EVERY_MS = 1000
const PEER_WAIT_MS = 60_000
const VOLUME_PREFIX = 'pre-'

export interface PrestageDeps {
  dataDir: string
  catalog: Catalog
  images: ImageService
  jobs: JobManager
  store: LayerStore
  hasher: BlockHasher
  fleet: FleetService
  adverts: AdvertBook
  fetches: FetchService
  blockSize: number
  log: Logger
}

export class PrestageService {
  readonly #d: PrestageDeps
  readonly #book: PrestageBook
  readonly #reports = new TargetReports()
  // Source: the job running a point for each id.
  readonly #jobs = new Map<string, string>()
  // Target: ids whose point is being received now.
  readonly #receiving = new Set<string>()
  #swarm: FleetSwarm | undefined

  constructor (deps: PrestageDeps) {
    this.#d = deps
    this.#book = new PrestageBook(path.join(deps.dataDir, 'prestage'))
  }

  async start (): Promise<void> {
    const { unreadable } = await this.#book.load(this.#d.log)
    for (const rec of this.#book.all()) {
      // A point that was being taken when the daemon stopped is not there.
      if (rec.role === 'source' && (rec.state === 'indexing' || rec.state === 'syncing')) rec.state = rec.points.length ? 'staging' : 'failed'
      for (const p of rec.points) await this.#serve(rec, p).catch(() => {})
    }
    // Not when a record could not be read: its points would look unnamed.
    const named = new Set(this.#book.all().flatMap(r => r.points.map(p => p.volume)))
    const swept = unreadable ? [] : await sweepPoints(this.#d.store, VOLUME_PREFIX, named)
    if (swept.length) this.#d.log.warn('removed pre-stage points a crash left unrecorded', { volumes: swept.join(',') })
    this.#d.fleet.onSwarm(swarm => this.#attach(swarm))
  }

  #attach (swarm: FleetSwarm): void {
    this.#swarm = swarm
    swarm.on('Stage', (s: PeerSession, body: Stage) => { this.#onStage(s, body).catch(err => this.#d.log.warn('stage request failed', { id: body.id, error: (err as Error).message })) })
    swarm.on('StageStatus', (s: PeerSession, body: StageStatus) => this.#onStatus(s, body))
    swarm.on('peer', (s: PeerSession) => this.#onPeer(s))
    for (const rec of this.#book.all()) {
      const last = rec.points[rec.points.length - 1]
      if (rec.role === 'source' && last && rec.state !== 'cancelled' && rec.state !== 'failed') swarm.advertiseTo(rec.peer, [this.#advert(rec, last)])
    }
  }

  // ---- source ----

  async begin (params: PrestageStartParams): Promise<JobInfo> {
    const swarm = this.#requireSwarm()
    const peer = parseKey(params.to).toString('hex')
    if (peer === this.#d.fleet.publicKey) throw BAD_PARAMS('the target is this host')
    if (!swarm.isAllowed(Buffer.from(peer, 'hex'))) throw BAD_PARAMS(`host ${peer.slice(0, 16)} is not on this fleet's allow-list`)
    const rec: Record = {
      id: randomBytes(6).toString('hex'),
      role: 'source',
      state: 'indexing',
      disk: params.disk,
      peer,
      peerHost: swarm.sessions.get(peer)?.remoteHello?.host ?? '',
      base: null,
      size: 0,
      points: [],
      target: null,
      createdAt: new Date().toISOString()
    }
    // The disk: a path (raw file or block device), an image, or a store volume.
    if (path.isAbsolute(params.disk)) {
      const disk = await openDisk(params.disk)
      Object.assign(rec, { diskKind: disk.kind, diskPath: disk.path, size: disk.size })
    } else {
      const image = await this.#d.images.get(params.disk).catch(() => undefined)
      if (image) {
        Object.assign(rec, { diskKind: 'image', image: image.id, size: image.size })
      } else {
        const vol = await this.#d.store.stat(params.disk)
        if (!vol) throw BAD_PARAMS(`${params.disk} is not a path, an image or a store volume`)
        const disk = await openDisk(vol.path)
        Object.assign(rec, { diskKind: disk.kind, diskPath: disk.path, size: disk.size })
      }
    }
    if (params.base && rec.diskKind !== 'image') {
      const image = await this.#d.images.get(params.base)
      rec.base = { name: image.name, root: image.root, volume: image.volume }
    }
    await this.#book.save(rec)
    this.#d.log.info('prestage started', { id: rec.id, disk: rec.disk, target: peer.slice(0, 16), base: rec.base?.name ?? '-' })
    return this.#runPoint(rec)
  }

  async sync (id: string): Promise<JobInfo> {
    const rec = this.#book.get(id)
    if (rec.role !== 'source') throw BAD_PARAMS(`prestage ${id} is staged here from ${rec.peer.slice(0, 16)}; sync it on its source`)
    if (rec.state === 'cancelled') throw BAD_PARAMS(`prestage ${id} was cancelled`)
    if (this.#jobs.has(id)) throw BAD_PARAMS(`prestage ${id} is busy (job ${this.#jobs.get(id)})`)
    this.#requireSwarm()
    return this.#runPoint(rec)
  }

  #runPoint (rec: Record): JobInfo {
    const job = this.#d.jobs.start('prestage', rec.id, async ctx => {
      try {
        return await this.#point(rec, ctx)
      } catch (err) {
        if (rec.state !== 'cancelled') {
          rec.state = 'failed'
          rec.error = (err as Error).message
          await this.#book.save(rec)
        }
        throw err
      } finally {
        this.#jobs.delete(rec.id)
      }
    })
    this.#jobs.set(rec.id, job.id)
    return job
  }

  async #point (rec: Record, ctx: JobContext): Promise<PrestageInfo> {
    const prev = rec.points[rec.points.length - 1]
    const seq = (prev?.seq ?? 0) + 1
    rec.state = prev ? 'syncing' : 'indexing'
    delete rec.error
    await this.#book.save(rec)
    const t0 = performance.now()
    let point: PrestagePoint
    let manifest: Manifest
    if (rec.diskKind === 'image') {
      const image = await this.#d.images.get(rec.image!)
      manifest = (await this.#d.catalog.manifest(image.root))!
      point = { seq, root: image.root, volume: image.volume, createdAt: new Date().toISOString(), capture: 'image', index: 'manifest', hashedBlocks: 0, changedBlocks: prev && prev.root === image.root ? 0 : image.blocks - image.zeroBlocks, indexMs: 0 }
    } else {
      ctx.progress('point', 0, 1, 'steps')
      const disk: Disk = await openDisk(rec.diskPath!)
      const key = `${VOLUME_PREFIX}${rec.id}-${seq}`
      const old = await this.#d.store.stat(key)
      if (old) await this.#d.store.remove(key)
      const { volume, capture } = await capturePoint(this.#d.store, disk, key, ctx.signal)
      try {
        const against = prev
          ? { manifest: await this.#book.manifest(rec.id, prev.seq), volume: await this.#volume(prev.volume) }
          : rec.base ? { manifest: (await this.#d.catalog.manifest(rec.base.root))!, volume: await this.#volume(rec.base.volume) } : undefined
        const indexed = await indexPoint({
          store: this.#d.store,
          hasher: this.#d.hasher,
          blockSize: this.#d.blockSize,
          volume,
          size: disk.size,
          ...(against?.manifest ? { prev: against } : {}),
          signal: ctx.signal,
          onProgress: (d, t) => ctx.progress('index', d, t)
        })
        manifest = indexed.manifest
        rec.size = disk.size
        point = { seq, root: manifest.root.toString('hex'), volume: volume.key, createdAt: new Date().toISOString(), capture, index: indexed.index, hashedBlocks: indexed.hashedBlocks, changedBlocks: indexed.changedBlocks, indexMs: Math.round(performance.now() - t0) }
      } catch (err) {
        await this.#d.store.remove(key).catch(() => {})
        throw err
      }
    }
    await this.#book.writeManifest(rec.id, seq, manifest)
    rec.points.push(point)
    rec.state = 'staging'
    await this.#book.save(rec)
    await this.#serve(rec, point, manifest)
    this.#d.log.info('prestage point taken', { id: rec.id, seq, root: point.root.slice(0, 16), capture: point.capture, index: point.index, hashed: point.hashedBlocks, changed: point.changedBlocks, ms: point.indexMs })

    // Offer it to the target and wait until it holds it.
    const report = await this.#waitFor(rec, point, prev, ctx)
    rec.state = 'staged'
    rec.target = report
    // The previous point served as the target's base; both sides can let it go now.
    for (const old of rec.points.slice(0, -1)) await this.#dropPoint(rec, old)
    rec.points = rec.points.slice(-1)
    await this.#book.save(rec)
    return prestageInfo(this.#d.store, rec)
  }

  #advert (rec: Record, p: PrestagePoint) {
    return this.#d.adverts.sign({ root: Buffer.from(p.root, 'hex'), name: `prestage/${rec.id}/${p.seq}`, size: rec.size, blockSize: this.#d.blockSize, labels: [`${PRESTAGE_LABEL}=${rec.id}`] })
  }

  #offer (rec: Record, p: PrestagePoint, prev: PrestagePoint | undefined): boolean {
    const swarm = this.#swarm
    if (!swarm) return false
    swarm.advertiseTo(rec.peer, [this.#advert(rec, p)])
    return swarm.sendTo(rec.peer, 'Stage', {
      id: rec.id,
      seq: p.seq,
      root: Buffer.from(p.root, 'hex'),
      name: rec.disk.slice(0, 255),
      size: rec.size,
      ...(prev ? { base: Buffer.from(prev.root, 'hex') } : {}),
      ...(rec.base ? { image: Buffer.from(rec.base.root, 'hex') } : {})
    })
  }

  #waitFor (rec: Record, p: PrestagePoint, prev: PrestagePoint | undefined, ctx: JobContext): Promise<PrestageTargetReport> {
    const report = this.#reports.wait(rec.id, p.seq, ctx.signal, () => NO_PEERS(`the target ${rec.peer.slice(0, 16)} reported nothing on point ${p.seq} for ${REPORT_TIMEOUT_MS / 1000} s`), r => {
      rec.target = r
      ctx.progress(`target ${r.state}${r.message ? ` (${r.message})` : ''}`, r.done, r.total, 'blocks')
    })
    ctx.progress('offer', 0, 1, 'steps')
    if (!this.#offer(rec, p, prev)) this.#d.log.info('prestage target not connected; offering when it is', { id: rec.id, target: rec.peer.slice(0, 16) })
    return report
  }

  #onStatus (session: PeerSession, body: StageStatus): void {
    const rec = this.#book.byId(body.id)
    if (!rec || rec.role !== 'source' || rec.peer !== session.remoteHex) return
    let stats: TransferStats | undefined
    try { stats = body.stats ? JSON.parse(body.stats) : undefined } catch {}
    const report: PrestageTargetReport = { seq: body.seq, state: body.state, done: body.done ?? 0, total: body.total ?? 0, ...(body.message ? { message: body.message } : {}), ...(stats ? { stats } : {}) }
    rec.peerHost = session.remoteHello?.host ?? rec.peerHost
    const w = this.#reports.get(rec.id)
    if (!w || w.seq !== body.seq) {
      if (body.state === 'cancelled' && rec.state !== 'cancelled') {
        // The target dropped its copy: so does this side.
        this.#cancelSource(rec, 'the target cancelled it').catch(() => {})
      }
      return
    }
    w.onReport(report)
    if (body.state === 'done') w.resolve(report)
    else if (body.state === 'failed' || body.state === 'cancelled') w.reject(new OsfarmError('JOB_FAILED', `the target ${body.state} point ${body.seq}: ${body.message ?? ''}`))
  }

  #onPeer (session: PeerSession): void {
    for (const rec of this.#book.all()) {
      if (rec.role !== 'source' || rec.peer !== session.remoteHex) continue
      rec.peerHost = session.remoteHello?.host ?? rec.peerHost
      const w = this.#reports.get(rec.id)
      const p = rec.points.find(x => x.seq === w?.seq)
      if (w && p) this.#offer(rec, p, rec.points.find(x => x.seq === p.seq - 1))
    }
  }

  async #dropPoint (rec: Record, p: PrestagePoint): Promise<void> {
    // A disk that did not change between two points gives the same root twice: keep offering it.
    if (!rec.points.some(o => o !== p && o.root === p.root)) this.#swarm?.withdrawFrom(rec.peer, Buffer.from(p.root, 'hex'))
    if (p.capture !== 'image' && rec.role === 'source') {
      this.#d.fleet.local.removeVolume(p.volume)
      await this.#d.store.remove(p.volume).catch(() => {})
    }
    if (rec.role === 'target' && !(await this.#isImageVolume(p.volume))) {
      this.#d.fleet.local.removeVolume(p.volume)
      await this.#d.store.remove(p.volume).catch(() => {})
    }
    await this.#book.removeManifest(rec.id, p.seq)
  }

  async #cancelSource (rec: Record, why: string): Promise<void> {
    rec.state = 'cancelled'
    rec.error = why
    const job = this.#jobs.get(rec.id)
    if (job) this.#d.jobs.cancel(job)
    this.#reports.get(rec.id)?.reject(JOB_CANCELLED(why))
    this.#swarm?.sendTo(rec.peer, 'Stage', { id: rec.id, seq: rec.points[rec.points.length - 1]?.seq ?? 0, cancel: true })
    for (const p of rec.points) this.#swarm?.withdrawFrom(rec.peer, Buffer.from(p.root, 'hex'))
    for (const p of rec.points) await this.#dropPoint(rec, p)
    rec.points = []
    await this.#book.save(rec)
  }

  // ---- target ----

  async #onStage (session: PeerSession, body: Stage): Promise<void> {
    let rec = this.#book.byId(body.id)
    if (rec && (rec.role !== 'target' || rec.peer !== session.remoteHex)) return
    if (body.cancel) {
      if (rec && rec.state !== 'cancelled') await this.#cancelTarget(rec, 'the source cancelled it', false)
      return
    }
    const root = body.root!.toString('hex')
    if (!rec) {
      rec = { id: body.id, role: 'target', state: 'staging', disk: body.name ?? '', peer: session.remoteHex, peerHost: session.remoteHello?.host ?? '', base: null, size: body.size ?? 0, points: [], target: null, createdAt: new Date().toISOString() }
      this.#book.add(rec)
    }
    if (rec.state === 'cancelled') { this.#report(rec, body.seq, 'cancelled', 'cancelled on the target'); return }
    const have = rec.points.find(p => p.seq === body.seq)
    if (have) { this.#report(rec, body.seq, 'done', undefined, rec.target?.stats); return }
    if (this.#receiving.has(rec.id)) {
      if (rec.pending?.seq === body.seq) return
      // A newer point while one is on its way: the older one is moot.
      if (rec.pending?.job) this.#d.jobs.cancel(rec.pending.job)
      for (let i = 0; i < 100 && this.#receiving.has(rec.id); i++) await new Promise(resolve => setTimeout(resolve, 100))
    }
    this.#receiving.add(rec.id)
    rec.pending = { seq: body.seq, root, ...(body.base ? { base: body.base.toString('hex') } : {}) }
    rec.size = body.size ?? rec.size
    rec.state = 'staging'
    await this.#book.save(rec)
    this.#receive(rec, body).catch(err => this.#d.log.warn('prestage receive failed', { id: rec!.id, error: (err as Error).message })).finally(() => this.#receiving.delete(rec!.id))
  }

  async #receive (rec: Record, body: Stage): Promise<void> {
    const seq = body.seq
    const root = body.root!.toString('hex')
    const pending = rec.pending!
    try {
      // The image the disk came from: from any holder, before the disk's own blocks.
      if (body.image && !rec.points.length) {
        const imageRoot = body.image.toString('hex')
        const images = await this.#d.images.list()
        const image = images.find(i => i.root === imageRoot)
        if (image) {
          rec.base = { name: image.name, root: image.root, volume: image.volume }
        } else if (this.#swarm?.holders(imageRoot).length) {
          const got = await this.#watchFetch(rec, seq, 'base image', await this.#d.fetches.fetch(imageRoot, { peerWaitMs: PEER_WAIT_MS })).catch(err => {
            this.#d.log.warn('prestage base image fetch failed; the source sends its blocks', { id: rec.id, error: (err as Error).message })
            return undefined
          })
          if (got) rec.base = { name: got.image.name, root: got.image.root, volume: got.image.volume }
        }
      }
      let volume: string
      let stats: TransferStats | undefined
      const image = (await this.#d.images.list()).find(i => i.root === root)
      if (image) {
        volume = image.volume
      } else {
        // A fetch of it resumed after a restart is watched, not started again.
        const running = this.#d.fetches.fetchJobOf(root)
        const job = running ? this.#d.jobs.get(running) : await this.#d.fetches.fetch(root, {
          register: false,
          name: `prestage-${rec.id}-${seq}`,
          peerWaitMs: PEER_WAIT_MS,
          // The manifest as a delta against the last point, or else the image the disk came from.
          ...(this.#manifestBase([pending.base, rec.base?.root]))
        })
        pending.job = job.id
        const r = await this.#watchFetch(rec, seq, 'disk', job)
        volume = r.volume!
        stats = r.stats
      }
      const manifest = this.#d.fleet.local.manifest(Buffer.from(root, 'hex')) ?? await this.#d.catalog.manifest(root)
      if (!manifest) throw new OsfarmError('INTERNAL', `the manifest of ${root.slice(0, 16)} is gone`)
      await this.#book.writeManifest(rec.id, seq, manifest)
      const point: PrestagePoint = { seq, root, volume, createdAt: new Date().toISOString(), capture: image ? 'image' : 'copy', index: 'manifest', hashedBlocks: 0, changedBlocks: stats?.received ?? 0, indexMs: 0 }
      const old = rec.points
      rec.points = [point]
      delete rec.pending
      rec.state = 'staged'
      rec.target = { seq, state: 'done', done: 1, total: 1, ...(stats ? { stats } : {}) }
      await this.#book.save(rec)
      for (const p of old) await this.#dropPoint(rec, p)
      this.#report(rec, seq, 'done', undefined, stats)
      this.#d.log.info('prestage point held', { id: rec.id, seq, root: root.slice(0, 16), received: stats?.received ?? 0, wire: stats?.wireBytes ?? 0 })
    } catch (err) {
      if (rec.state === 'cancelled') return
      rec.state = 'failed'
      rec.error = (err as Error).message
      delete rec.pending
      await this.#book.save(rec)
      this.#report(rec, seq, 'failed', (err as Error).message.slice(0, 1000))
    }
  }

  #manifestBase (roots: Array<string | undefined>): { manifestBase?: string } {
    const root = roots.find(r => r && this.#d.fleet.local.manifest(Buffer.from(r, 'hex')))
    return root ? { manifestBase: root } : {}
  }

  // Waits for a fetch job, reporting its progress to the source.
  async #watchFetch (rec: Record, seq: number, what: string, job: JobInfo): Promise<FetchResult> {
    let last = 0
    const end = await this.#d.jobs.watch(job.id, e => {
      if (e.type !== 'progress' || Date.now() - last < REPORT_EVERY_MS) return
      last = Date.now()
      const p = e.job.progress
      this.#report(rec, seq, 'fetching', `${what}: ${p.phase}`, undefined, p.done, p.total)
    })
    if (end.state !== 'done') throw new OsfarmError((end.error?.code ?? 'JOB_FAILED') as 'JOB_FAILED', end.error?.message ?? `fetch ${end.state}`)
    return end.result as FetchResult
  }

  #report (rec: Record, seq: number, state: string, message?: string, stats?: TransferStats, done = state === 'done' ? 1 : 0, total = 1): void {
    this.#swarm?.sendTo(rec.peer, 'StageStatus', { id: rec.id, seq, state, done, total, ...(message ? { message } : {}), ...(stats ? { stats: JSON.stringify(stats) } : {}) })
  }

  async #cancelTarget (rec: Record, why: string, tell: boolean): Promise<void> {
    rec.state = 'cancelled'
    rec.error = why
    const root = rec.pending?.root
    if (rec.pending?.job) this.#d.jobs.cancel(rec.pending.job)
    delete rec.pending
    for (const p of rec.points) await this.#dropPoint(rec, p)
    rec.points = []
    await this.#book.save(rec)
    if (root) {
      // The cancelled fetch's partial volume goes once its job has wound down.
      for (let i = 0; i < 50 && this.#d.fetches.fetchJobOf(root); i++) await new Promise(resolve => setTimeout(resolve, 100))
      await this.#d.fetches.discardFetch(root).catch(() => {})
    }
    if (tell) this.#report(rec, 0, 'cancelled', why)
  }

  // ---- both ----

  async cancel (id: string): Promise<PrestageInfo> {
    const rec = this.#book.get(id)
    if (rec.state !== 'cancelled') {
      if (rec.role === 'source') await this.#cancelSource(rec, 'cancelled on the source')
      else await this.#cancelTarget(rec, 'cancelled on the target', true)
    }
    return prestageInfo(this.#d.store, rec)
  }

  list (): Promise<PrestageInfo[]> {
    return Promise.all(this.#book.all().sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map(r => prestageInfo(this.#d.store, r)))
  }

  async get (id: string): Promise<PrestageInfo> {
    return prestageInfo(this.#d.store, this.#book.get(id))
  }

  // A point's volume serves its blocks (and its manifest) to the peer.
  async #serve (rec: Record, p: PrestagePoint, manifest?: Manifest): Promise<void> {
    const vol = await this.#d.store.stat(p.volume)
    const m = manifest ?? await this.#book.manifest(rec.id, p.seq)
    if (vol && m) this.#d.fleet.local.addVolume(p.volume, vol.path, m)
  }

  async #isImageVolume (volume: string): Promise<boolean> {
    return (await this.#d.images.list()).some((i: ImageInfo) => i.volume === volume)
  }

  async #volume (key: string) {
    const v = await this.#d.store.stat(key)
    if (!v) throw NOT_FOUND(`volume ${key} is gone`)
    return v
  }

  #requireSwarm (): FleetSwarm {
    const s = this.#d.fleet.swarm
    if (!s) throw FLEET_NOT_CONFIGURED()
    return s
  }
}
