// Transfers: the daemon's fleet side. Opens the swarm when a fleet is configured, serves this
// host's images to peers, advertises them, and runs fetch jobs (plan, snapshot, local copies,
// remote blocks, whole-image check, registration), resuming unfinished ones at start.

import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { KeyPair } from 'hyperdht'
import { AMBIGUOUS_ID, BAD_PARAMS, FLEET_NOT_CONFIGURED, IMAGE_NOT_FOUND, NO_PEERS, OsfarmError, PERMISSION_DENIED, VERIFY_FAILED } from '../../protocol/errors.js'
import type { FleetInfo, FetchResult, ImageInfo, JobInfo, PeerInfo } from '../../protocol/rpc.js'
import { advertExtSigningBytes, advertRevSigningBytes, advertSigningBytes, advertVerSigningBytes, supersedes, type Advert } from '../../protocol/wire.js'
import { checkLabels, dropLabels, mergeLabels, sameLabels } from '../images/labels.js'
import { blockCount, decodeManifest, encodeManifest, zeroBlockCount, zeroSlots, type Manifest } from '../blocks/manifest.js'
import { applyManifestDelta } from '../blocks/manifest-delta.js'
import { RateLimiter } from '../swarm/rate-limiter.js'
import type { BlockHasher } from '../blocks/block-hasher.js'
import type { Catalog } from '../catalog/catalog.js'
import type { ImageService } from '../images/images.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { LayerStore } from '../store/layer-store.js'
import type { Logger } from '../log.js'
import { FleetSwarm } from '../swarm/fleet-swarm.js'
import { loadIdentity, sign } from '../swarm/identity.js'
import { fleetTopic, newFleetConfig, parseHostPort, parseKey, readFleetConfig, writeFleetConfig, type FleetConfig } from '../swarm/fleet-config.js'
import { chooseParent, planFetch } from './fetch-planner.js'
import { emptyStats, Fetcher, type FetchStats } from './fetcher.js'
import { LocalBlocks } from './local-blocks.js'
import { Progress } from './progress.js'
import { Verifier } from './verify.js'
import { blockPool } from '../blocks/block-pool.js'

const PEER_WAIT_MS = 30_000
// Background fetches tell peers what they have this often, not only at each synced flush, so
// hosts fetching one image together see each other's new blocks sooner (written blocks are
// servable before they are synced; only the resume point waits for the sync).
const HAVE_MS = 250
const MAX_MANIFEST_BYTES = 256 << 20
export const FETCH_VOLUME_PREFIX = 'fetch-'

interface FetchState {
  root: string
  name: string
  volume: string
  parent?: string
  advert?: SerializedAdvert
  // Appended: a fetch that is not registered as an image (pre-staging), background work.
  register?: boolean
  background?: boolean
}

type SerializedAdvert = Record<keyof Advert, string | number | string[] | null | undefined>

export interface TransferDeps {
  dataDir: string
  catalog: Catalog
  store: LayerStore
  images: ImageService
  jobs: JobManager
  hasher: BlockHasher
  log: Logger
}

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
  // 'written': on a fresh fetch onto a snapshot of a verified volume, check at the end only
  // the blocks this fetch wrote (pre-staging's cut-over); else every data block.
  verify?: 'all' | 'written'
}

export class TransferService {
  readonly local = new LocalBlocks()
  swarm: FleetSwarm | undefined
  #d: TransferDeps
  #keyPair!: KeyPair
  #adverts
  #running = new Map<string, Promise<JobInfo>>()
  #relabels: Promise<unknown> = Promise.resolve()
  #partialBits = new Map<string, Buffer>()
  // Root → id of the newest fetch job started for it.
  #jobOf = new Map<string, string>()
  // Told of each swarm opened (fleet init reopens it): the seed and prestage services listen.
  #swarmListeners: Array<(swarm: FleetSwarm) => void> = []

  constructor (deps: TransferDeps) {
    this.#d = deps
    this.#adverts = deps.catalog.sublevel<SerializedAdvert>('adverts')
  }

  get #stateDir (): string { return path.join(this.#d.dataDir, 'transfers') }

  async start (): Promise<void> {
    this.#d.images.subscribe({
      registered: (image, manifest) => { this.onImage(image, manifest).catch(err => this.#d.log.warn('cannot advertise image', { image: image.id, error: (err as Error).message })) },
      removed: image => { this.onImageRemoved(image).catch(err => this.#d.log.warn('cannot withdraw image', { image: image.id, error: (err as Error).message })) }
    })
    this.#keyPair = await loadIdentity(this.#d.dataDir)
    for (const image of await this.#d.catalog.listImages()) await this.#addImage(image).catch(() => {})
    const config = await readFleetConfig(this.#d.dataDir)
    if (config) await this.#openSwarm(config)
    await this.#resumeAll()
  }

  async stop (): Promise<void> {
    await this.swarm?.close()
    this.swarm = undefined
    this.local.close()
  }

  // Active volumes that belong to unfinished fetches survive crash recovery.
  static keepOnRecover (key: string): boolean {
    return key.startsWith(FETCH_VOLUME_PREFIX)
  }

  async #openSwarm (config: FleetConfig): Promise<void> {
    const self = this.#keyPair.publicKey.toString('hex')
    if (!config.allow.includes(self)) config.allow = [self, ...config.allow]
    this.swarm = await FleetSwarm.open({
      keyPair: this.#keyPair,
      config,
      source: this.local,
      log: (msg, fields) => this.#d.log.info(msg, fields as Record<string, string>)
    })
    this.swarm.advertise(await this.#allAdverts())
    this.swarm.on('revised', (a: Advert) => {
      this.#relabelling(() => this.#onRevised(a)).catch(err => this.#d.log.warn('cannot take a relabelled advert', { root: a.root.toString('hex'), error: (err as Error).message }))
    })
    // A host in a fleet serves and fetches blocks: its block workers start now, not with the
    // first request.
    blockPool().warm()
    for (const l of this.#swarmListeners) l(this.swarm)
    this.#d.log.info('fleet swarm open', { key: self, dht: JSON.stringify(this.swarm.address()), peers: config.allow.length - 1 })
  }

  // ---- images ----

  // Called when an image is registered (import, build, fetch).
  async onImage (image: ImageInfo, manifest?: Manifest): Promise<void> {
    await this.#addImage(image, manifest)
    const advert = await this.#advertFor(image)
    this.swarm?.advertise([advert])
  }

  // Another image may share the volume or the root (the same content under two names): then
  // it stays served and advertised. Otherwise the saved advert goes too, so the same content
  // registered again is advertised under its new name and labels, not the old ones.
  async onImageRemoved (image: ImageInfo): Promise<void> {
    const others = await this.#d.catalog.listImages()
    if (!others.some(i => i.volume === image.volume)) this.local.removeVolume(image.volume)
    if (others.some(i => i.root === image.root)) return
    this.swarm?.withdraw(Buffer.from(image.root, 'hex'))
    await this.#adverts.del(image.root)
  }

  async #addImage (image: ImageInfo, manifest?: Manifest): Promise<void> {
    const m = manifest ?? await this.#d.catalog.manifest(image.root)
    const vol = await this.#d.store.stat(image.volume)
    if (!m || !vol) return
    this.local.addVolume(image.volume, vol.path, m)
  }

  async #advertFor (image: ImageInfo): Promise<Advert> {
    const saved = await this.#adverts.get(image.root)
    if (saved) return parseAdvert(saved)
    const advert = this.signAdvert({ root: Buffer.from(image.root, 'hex'), name: image.name, size: image.size, blockSize: image.blockSize, created: Date.parse(image.createdAt) || Date.now(), labels: image.labels ?? [], version: image.version, specKey: image.specKey ? Buffer.from(image.specKey, 'hex') : null })
    await this.#adverts.put(image.root, serializeAdvert(advert))
    return advert
  }

  // An advert this host signs as the builder, with the appended fields (created, labels, and
  // the revision once relabelled).
  signAdvert (a: { root: Buffer, name: string, size: number, blockSize: number, created?: number, labels?: string[], revision?: number, version?: number | null, specKey?: Buffer | null }): Advert {
    const body = { root: a.root, name: a.name, size: a.size, blockSize: a.blockSize, specKey: a.specKey ?? null, builder: this.#keyPair.publicKey, created: a.created ?? Date.now(), labels: a.labels ?? [], revision: a.revision || null, version: a.version ?? null }
    const advert: Advert = { ...body, signature: sign(advertSigningBytes(body), this.#keyPair), extSignature: sign(advertExtSigningBytes(body), this.#keyPair) }
    if (body.revision) advert.revSignature = sign(advertRevSigningBytes(body), this.#keyPair)
    if (body.version) advert.verSignature = sign(advertVerSigningBytes(body), this.#keyPair)
    return advert
  }

  // Changes an image's labels. Labels are signed into the image's advert, so only its builder
  // can: the advert is signed again with the next revision, and every host that hears it
  // replaces the older one (holders update their copies' labels and pass it on).
  relabel (ref: string, change: { set: string[], remove: string[] }): Promise<ImageInfo> {
    return this.#relabelling(() => this.#relabel(ref, change))
  }

  // Relabellings, local and heard, one at a time: each reads the saved advert it replaces (two
  // at once would sign one revision twice, with different labels).
  #relabelling<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.#relabels.then(fn)
    this.#relabels = run.catch(() => {})
    return run
  }

  async #relabel (ref: string, change: { set: string[], remove: string[] }): Promise<ImageInfo> {
    const image = await this.#d.images.get(ref)
    const saved = await this.advertOf(image.root)
    if (saved && !saved.builder.equals(this.#keyPair.publicKey)) {
      throw PERMISSION_DENIED(`image ${image.name} was built by host ${saved.builder.toString('hex').slice(0, 16)}: only that host can change its labels (they are signed into its advert)`)
    }
    const current = saved?.labels ?? image.labels ?? []
    const labels = checkLabels(mergeLabels(dropLabels(current, change.remove), checkLabels(change.set)))
    if (sameLabels(labels, current) && sameLabels(labels, image.labels ?? [])) return image
    // The advert first: a crash before the catalog is updated is mended by running it again.
    if (saved) {
      const next = this.signAdvert({ root: saved.root, name: saved.name, size: saved.size, blockSize: saved.blockSize, created: saved.created ?? undefined, labels, revision: (saved.revision ?? 0) + 1, version: saved.version ?? null, specKey: saved.specKey ?? null })
      await this.#adverts.put(image.root, serializeAdvert(next))
      this.swarm?.advertise([next])
    }
    return (await this.#labelImagesOf(image.root, labels)).find(i => i.id === image.id) ?? image
  }

  // Sets `labels` on every image here whose content is `root` (they share one advert).
  async #labelImagesOf (root: string, labels: string[]): Promise<ImageInfo[]> {
    const out: ImageInfo[] = []
    for (const i of await this.#d.catalog.listImages()) if (i.root === root) out.push(await this.#d.images.setLabels(i, labels))
    return out
  }

  // A relabelling heard from the fleet. For an image held here it replaces the saved advert and
  // the copies' labels, and this host advertises the new one from now on.
  async #onRevised (a: Advert): Promise<void> {
    const hex = a.root.toString('hex')
    const saved = await this.advertOf(hex)
    if (!saved || !supersedes(a, saved)) return
    await this.#adverts.put(hex, serializeAdvert(a))
    await this.#labelImagesOf(hex, a.labels ?? [])
    this.swarm?.advertise([a])
  }

  // The advert this host sends for a local image (its builder's, for a fetched one).
  async advertOf (rootHex: string): Promise<Advert | undefined> {
    const saved = await this.#adverts.get(rootHex)
    return saved ? parseAdvert(saved) : undefined
  }

  // The job fetching `rootHex` now, if any.
  fetchJobOf (rootHex: string): string | undefined {
    const id = this.#jobOf.get(rootHex)
    if (!id) return undefined
    try {
      return this.#d.jobs.get(id).state === 'running' ? id : undefined
    } catch {
      return undefined
    }
  }

  onSwarm (listener: (swarm: FleetSwarm) => void): void {
    this.#swarmListeners.push(listener)
    if (this.swarm) listener(this.swarm)
  }

  // Forgets an unfinished fetch of `rootHex` (its job must have ended): its progress, its
  // partial volume and the blocks it served.
  async discardFetch (rootHex: string): Promise<void> {
    if (this.fetchJobOf(rootHex)) return
    const dir = path.join(this.#stateDir, rootHex)
    const state = await readState(dir)
    if (state) {
      this.local.removeVolume(state.volume)
      const vol = await this.#d.store.stat(state.volume)
      if (vol?.kind === 'active') await this.#d.store.remove(state.volume).catch(() => {})
    }
    await fs.rm(dir, { recursive: true, force: true })
    this.#partialBits.delete(rootHex)
  }

  get publicKey (): string { return this.#keyPair.publicKey.toString('hex') }
  get keyPair (): KeyPair { return this.#keyPair }

  async #allAdverts (): Promise<Advert[]> {
    const out: Advert[] = []
    for (const image of await this.#d.catalog.listImages()) out.push(await this.#advertFor(image))
    return out
  }

  // ---- fleet ----

  async fleetInit (opts: { secret?: string, bootstrap?: string, peers?: string, dhtHost?: string, dhtPort?: number, uploadLimit?: number, peerUploadLimit?: number }): Promise<FleetInfo> {
    const old = await readFleetConfig(this.#d.dataDir)
    const list = (s?: string) => s ? s.split(',').map(x => x.trim()).filter(Boolean) : undefined
    const bootstrap = list(opts.bootstrap)
    bootstrap?.forEach(parseHostPort)
    const peers = list(opts.peers)?.map(k => parseKey(k).toString('hex'))
    const self = this.#keyPair.publicKey.toString('hex')
    const config = newFleetConfig({
      secret: opts.secret ?? old?.secret,
      allow: [...new Set([self, ...(old?.allow ?? []), ...(peers ?? [])])],
      bootstrap: bootstrap ?? old?.bootstrap ?? [],
      peers: peers ?? old?.peers ?? [],
      ...(opts.dhtHost || opts.dhtPort ? { dht: { host: opts.dhtHost, port: opts.dhtPort } } : old?.dht ? { dht: old.dht } : {})
    })
    if (opts.secret !== undefined && !/^[0-9a-f]{64}$/.test(opts.secret)) throw BAD_PARAMS('secret must be 64 hex digits')
    const uploadLimit = opts.uploadLimit ?? old?.uploadLimit
    const peerUploadLimit = opts.peerUploadLimit ?? old?.peerUploadLimit
    if (uploadLimit) config.uploadLimit = uploadLimit
    if (peerUploadLimit) config.peerUploadLimit = peerUploadLimit
    await writeFleetConfig(this.#d.dataDir, config)
    await this.swarm?.close()
    this.swarm = undefined
    await this.#openSwarm(config)
    return { ...this.#fleetInfo(config), secret: config.secret }
  }

  async fleetShow (): Promise<FleetInfo> {
    return this.#fleetInfo(await readFleetConfig(this.#d.dataDir))
  }

  async fleetAllow (key: string, allow: boolean): Promise<FleetInfo> {
    const hex = parseKey(key).toString('hex')
    const config = await readFleetConfig(this.#d.dataDir)
    if (!config) throw FLEET_NOT_CONFIGURED()
    if (allow && !config.allow.includes(hex)) config.allow.push(hex)
    if (!allow) {
      if (hex === this.#keyPair.publicKey.toString('hex')) throw BAD_PARAMS('a host cannot deny itself')
      config.allow = config.allow.filter(k => k !== hex)
      config.peers = config.peers.filter(k => k !== hex)
    }
    await writeFleetConfig(this.#d.dataDir, config)
    this.swarm?.reconfigure(config)
    return this.#fleetInfo(config)
  }

  #fleetInfo (config: FleetConfig | undefined): FleetInfo {
    return {
      configured: !!config,
      publicKey: this.#keyPair.publicKey.toString('hex'),
      allow: config?.allow ?? [],
      bootstrap: config?.bootstrap ?? [],
      peers: config?.peers ?? [],
      topic: config ? fleetTopic(config.secret).toString('hex') : null,
      uploadLimit: config?.uploadLimit ?? 0,
      peerUploadLimit: config?.peerUploadLimit ?? 0,
      dht: this.swarm?.address() ?? null
    }
  }

  peerList (): PeerInfo[] {
    return this.swarm?.peers() ?? []
  }

  // ---- fetch ----

  async fetch (ref: string, opts: FetchOptions = {}): Promise<JobInfo> {
    const swarm = this.swarm
    if (!swarm) throw FLEET_NOT_CONFIGURED()
    if (opts.from) parseKey(opts.from)
    const { root, advert } = await this.#resolve(ref, opts.peerWaitMs ?? PEER_WAIT_MS)
    const name = opts.name ?? advert?.name ?? `fetched-${root.slice(0, 12)}`
    return this.#startJob(root, name, advert, opts)
  }

  #startJob (root: string, name: string, advert: Advert | undefined, opts: FetchOptions): JobInfo {
    const job = this.#d.jobs.start('fetch', name, async ctx => {
      const prev = this.#running.get(root)
      if (prev) await prev.catch(() => {})
      let release!: () => void
      const mine = new Promise<JobInfo>(resolve => { release = () => resolve(undefined as unknown as JobInfo) })
      this.#running.set(root, mine)
      try {
        return await this.#fetchJob(root, name, advert, opts, ctx)
      } finally {
        if (this.#running.get(root) === mine) this.#running.delete(root)
        release()
      }
    }, { priority: opts.priority })
    this.#jobOf.set(root, job.id)
    return job
  }

  // A root (64 hex digits) or an image name advertised by peers.
  async #resolve (ref: string, waitMs: number): Promise<{ root: string, advert?: Advert }> {
    const swarm = this.swarm!
    const deadline = Date.now() + waitMs
    const isRoot = /^[0-9a-f]{64}$/.test(ref)
    for (;;) {
      if (isRoot) {
        const holder = swarm.peerAdverts().find(a => a.advert.root.toString('hex') === ref)
        return { root: ref, advert: holder?.advert }
      }
      const byRoot = new Map<string, { advert: Advert, holders: number }>()
      // NAME@N: that version; NAME: the newest version a builder advertises under it.
      const at = /^(.+)@(\d{1,9})$/.exec(ref)
      for (const { advert } of swarm.peerAdverts()) {
        if (at ? advert.name !== at[1] || advert.version !== Number(at[2]) : advert.name !== ref) continue
        const hex = advert.root.toString('hex')
        const e = byRoot.get(hex)
        if (e) e.holders++
        else byRoot.set(hex, { advert, holders: 1 })
      }
      if (byRoot.size === 1) {
        const [hex, e] = [...byRoot][0]!
        return { root: hex, advert: e.advert }
      }
      const versions = [...byRoot.values()].map(e => e.advert)
      if (byRoot.size > 1 && versions.every(a => a.version && a.builder.equals(versions[0]!.builder) && a.specKey?.equals(versions[0]!.specKey ?? Buffer.alloc(0)))) {
        const top = versions.reduce((x, y) => (y.version! > x.version! ? y : x))
        return { root: top.root.toString('hex'), advert: top }
      }
      if (byRoot.size > 1) throw AMBIGUOUS_ID(`peers advertise ${byRoot.size} images named "${ref}": ${[...byRoot.keys()].map(r => r.slice(0, 16)).join(', ')}; fetch one by root`)
      if (Date.now() > deadline) throw IMAGE_NOT_FOUND(`no peer advertises an image named "${ref}"`)
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }

  async #fetchJob (rootHex: string, name: string, advert: Advert | undefined, opts: FetchOptions, ctx: JobContext): Promise<FetchResult> {
    const started = performance.now()
    const swarm = this.swarm
    if (!swarm) throw FLEET_NOT_CONFIGURED()
    const have = (await this.#d.catalog.listImages()).find(i => i.root === rootHex)
    if (have && opts.register !== false) return { image: have, stats: undefined, alreadyPresent: true }
    const root = Buffer.from(rootHex, 'hex')
    const dir = path.join(this.#stateDir, rootHex)
    await fs.mkdir(dir, { recursive: true, mode: 0o700 })
    const stopLooking = swarm.lookFor(root)
    // Hosts fetching the same image in the background share out what to ask whole holders
    // for: tell them at once that this host is one of them.
    if (opts.priority === 'background' || (await readState(dir))?.background) swarm.broadcastHave(root, Buffer.alloc(0))
    try {
      // 1. The manifest: from disk when resuming, else from a holder, checked against the root.
      ctx.progress('manifest', 0, 1, 'steps')
      let mark = performance.now()
      const phase = (name: string) => { const now = performance.now(); stats.phases[name] = Math.round(now - mark); mark = now }
      let state = await readState(dir)
      let manifest: Manifest
      let manifestBytes = 0
      const saved = await fs.readFile(path.join(dir, 'manifest')).catch(() => undefined)
      if (saved) {
        manifest = decodeManifest(saved, root)
      } else {
        const got = await this.#getManifest(root, opts, ctx)
        manifest = got.manifest
        manifestBytes = got.wireBytes
        await fs.writeFile(path.join(dir, 'manifest'), encodeManifest(manifest), { mode: 0o600 })
      }
      const stats: FetchStats = emptyStats(manifest)
      stats.manifestBytes = manifestBytes
      phase('manifest')
      const count = blockCount(manifest.size, manifest.blockSize)
      const zero = zeroSlots(manifest.hashes)
      stats.zeroBlocks = zeroBlockCount(manifest)

      // 2. The target: resumed, or a snapshot of the best local volume (or empty).
      const progress = await Progress.open(path.join(dir, 'progress'), count)
      let vol = state ? await this.#d.store.stat(state.volume) : undefined
      let plan
      if (state && vol?.kind === 'active') {
        for (let i = 0; i < count; i++) if (!zero[i] && progress.has(i)) stats.resumed++
        plan = planFetch(manifest, undefined, (hashes, o) => this.local.locate(hashes, o), progress.bits)
        this.#d.log.info('fetch resumed', { root: rootHex, blocks: stats.resumed })
      } else {
        if (vol) await this.#d.store.remove(vol.key).catch(() => {})
        progress.bits.fill(0)
        const candidates = this.local.volumes().filter(v => v.complete)
        const parent = chooseParent(manifest, candidates.map(c => ({ volume: c.key, manifest: c.manifest })))
        const volume = `${FETCH_VOLUME_PREFIX}${rootHex.slice(0, 16)}-${randomBytes(3).toString('hex')}`
        state = { root: rootHex, name, volume, parent: parent?.volume, ...(advert ? { advert: serializeAdvert(advert) } : {}), ...(opts.register === false ? { register: false } : {}), ...(opts.priority === 'background' ? { background: true } : {}) }
        await writeState(dir, state)
        vol = await this.#d.store.prepare(volume, parent ? { parent: parent.volume, size: manifest.size } : { size: manifest.size })
        if (vol.size > manifest.size) {
          await fs.truncate(vol.path, manifest.size)
          vol = { ...vol, size: manifest.size }
        }
        plan = planFetch(manifest, parent, (hashes, o) => this.local.locate(hashes, o))
        // What the snapshot already holds, and zero blocks that are holes already, are done.
        for (const i of plan.inPlace) progress.set(i)
        const over = new Set(plan.zeroOverParent)
        for (let i = 0; i < count; i++) if (zero[i] && !over.has(i)) progress.set(i)
        await progress.save()
        stats.inPlace = plan.inPlace.length
        this.#d.log.info('fetch planned', { root: rootHex, parent: parent?.volume ?? '-', inPlace: plan.inPlace.length, local: plan.local.length, remote: plan.remoteBlocks, zeroOverParent: plan.zeroOverParent.length })
      }
      const target = vol
      if (state.advert && !advert) advert = parseAdvert(state.advert)

      // 3–4. Local copies and remote blocks, at once; the target serves what it has meanwhile.
      this.local.addPartial(state.volume, target.path, manifest)
      const doneNow: number[] = []
      for (let i = 0; i < count; i++) if (!zero[i] && progress.has(i)) doneNow.push(i)
      this.local.addBlocks(state.volume, doneNow)
      phase('plan')
      const background = state.background ?? opts.priority === 'background'
      let haveTimer: NodeJS.Timeout | undefined
      let dirty = new Set<number>()
      // Sends the given bytes of a bitfield (ascending byte offsets), near ones as one range.
      const sendRanges = (bits: Buffer, bytes: number[]) => {
        for (let k = 0; k < bytes.length;) {
          let j = k
          while (j + 1 < bytes.length && bytes[j + 1]! - bytes[j]! <= 16) j++
          swarm.broadcastHave(root, bits.subarray(bytes[k]!, bytes[j]! + 1), bytes[k]!)
          k = j + 1
        }
      }
      const sendHaves = () => {
        haveTimer = undefined
        const bytes = [...dirty].sort((x, y) => x - y)
        dirty = new Set()
        sendRanges(progress.bits, bytes)
      }
      // Foreground: at each flush, what changed since the last (the whole bitfield only once;
      // it is 64 KiB for a 2 GiB image, and flushes come every 16 MiB written).
      let flushedBits: Buffer | undefined
      const sendFlushed = (bits: Buffer) => {
        if (!flushedBits) {
          swarm.broadcastHave(root, bits)
          flushedBits = Buffer.from(bits)
          return
        }
        const bytes: number[] = []
        for (let k = 0; k < bits.length; k++) if (bits[k] !== flushedBits[k]) bytes.push(k)
        bits.copy(flushedBits)
        sendRanges(bits, bytes)
      }
      // Peers learn what it has already (in place, zero, resumed); then every HAVE_MS what it
      // wrote, instead of the whole bitfield at each flush.
      if (background) swarm.broadcastHave(root, progress.bits)
      // 5 (overlapped). Each data block is read back and checked once it is in place: the
      // snapshot's now, copies and received blocks as they are written; the rest at the end.
      let only: Uint8Array | undefined
      if (opts.verify === 'written' && plan.parent) {
        only = new Uint8Array(Math.ceil(count / 8))
        for (const c of plan.local) only[c.index >> 3]! |= 1 << (c.index & 7)
        for (const r of plan.remote) for (const i of r.indices) only[i >> 3]! |= 1 << (i & 7)
      }
      const verifier = new Verifier(target.path, manifest, blockPool(), only)
      verifier.add(plan.inPlace)
      const fetcher = new Fetcher({
        manifest,
        volume: state.volume,
        path: target.path,
        plan,
        progress,
        pool: swarm,
        local: this.local,
        stats,
        from: opts.from ? new Set([parseKey(opts.from).toString('hex')]) : undefined,
        signal: ctx.signal,
        peerWaitMs: opts.peerWaitMs,
        onFlush: bits => {
          this.#partialBits.set(rootHex, bits)
          if (!background) sendFlushed(bits)
        },
        onProgress: (done, total) => ctx.progress(`fetch ${(stats.rate / 1e6).toFixed(1)} MB/s from ${Object.keys(stats.peers).length} peer(s)`, done, total, 'blocks'),
        background,
        ...(opts.limit ? { limiter: new RateLimiter(opts.limit) } : {}),
        ...(background ? { self: this.#keyPair.publicKey.toString('hex') } : {}),
        onWritten: (indices: number[]) => {
          verifier.add(indices)
          if (!background) return
          for (const i of indices) dirty.add(i >> 3)
          haveTimer ??= setTimeout(sendHaves, HAVE_MS)
        },
        // The last checks run while the fetcher syncs the target.
        onAllWritten: () => {
          checked = verifier.finish({ signal: ctx.signal, onProgress: (d, t) => ctx.progress('verify', d, t) })
          // Read below, or dropped if the sync fails first.
          checked.catch(() => {})
        }
      })
      let checked: Promise<number[]> | undefined
      try {
        await fetcher.run()
      } catch (err) {
        verifier.close()
        await checked?.catch(() => {})
        throw err
      } finally {
        clearTimeout(haveTimer)
      }
      phase('transfer')

      // 5. Every data block read back and hashed: what the transfer left unchecked, now.
      ctx.progress('verify', 0, count, 'blocks')
      const bad = await (checked ?? verifier.finish({ signal: ctx.signal, onProgress: (d, t) => ctx.progress('verify', d, t) }))
      if (bad.length) {
        for (const i of bad) progress.bits[i >> 3]! &= ~(1 << (i & 7))
        await progress.save()
        throw VERIFY_FAILED(`${bad.length} blocks of the fetched image do not match the manifest (${bad.slice(0, 5).join(', ')}${bad.length > 5 ? ', ...' : ''}); fetch again to repair them`)
      }
      phase('verify')
      ctx.progress('register', 0, 1, 'steps')
      const committed = await this.#d.store.commit(state.volume)
      this.local.movePath(state.volume, committed.path)
      if (state.register === false || opts.register === false) {
        // Pre-staging: the caller owns the volume; it serves blocks by hash but is no image.
        await fs.rm(dir, { recursive: true, force: true })
        this.#partialBits.delete(rootHex)
        phase('register')
        stats.elapsedMs = Math.round(performance.now() - started)
        this.#d.log.info('fetch done', { root: rootHex, ms: stats.elapsedMs, inPlace: stats.inPlace, local: stats.copiedLocal, received: stats.received, wire: stats.wireBytes, volume: state.volume })
        const image: ImageInfo = {
          id: '', name: state.name, size: manifest.size, root: rootHex, blockSize: manifest.blockSize, blocks: count,
          zeroBlocks: zeroBlockCount(manifest), createdAt: new Date().toISOString(), volume: state.volume, origin: 'fetch', layers: []
        }
        return { image, stats, alreadyPresent: false, volume: state.volume }
      }
      // The builder may have relabelled the image since the fetch began.
      const newest = advert && (this.swarm?.newest(advert) ?? advert)
      if (newest) await this.#adverts.put(rootHex, serializeAdvert(newest))
      // Registration tells this service (subscribe), which serves and advertises it whole.
      // A versioned advert: the image is that version of its name here too (NAME@N).
      const version = newest?.version ? { version: newest.version, ...(newest.specKey ? { specKey: newest.specKey.toString('hex') } : {}) } : undefined
      const image = await this.#d.images.register({ volume: state.volume, name: await this.#freeName(state.name, rootHex, version?.version), origin: 'fetch', manifest, ctx, ...(newest?.labels?.length ? { labels: newest.labels } : {}), ...(version ? { version } : {}) })
      await fs.rm(dir, { recursive: true, force: true })
      this.#partialBits.delete(rootHex)
      phase('register')
      stats.elapsedMs = Math.round(performance.now() - started)
      this.#d.log.info('fetch done', { root: rootHex, ms: stats.elapsedMs, inPlace: stats.inPlace, local: stats.copiedLocal, received: stats.received, wire: stats.wireBytes, bad: stats.badBlocks })
      return { image, stats, alreadyPresent: false }
    } finally {
      stopLooking()
    }
  }

  // The manifest from a holder, checked against the root; as a delta where a holder can make
  // one: against opts.manifestBase, or else against the newest image this host holds that a
  // holder also advertises (wireBytes counts what came over the wire).
  async #getManifest (root: Buffer, opts: FetchOptions, ctx: JobContext): Promise<{ manifest: Manifest, wireBytes: number }> {
    const rootHex = root.toString('hex')
    const baseHex = opts.manifestBase ?? await this.#commonImage(rootHex, opts.from)
    const base = baseHex ? this.local.manifest(Buffer.from(baseHex, 'hex')) ?? await this.#d.catalog.manifest(baseHex) : undefined
    if (base) {
      const deadline = Date.now() + Math.min(opts.peerWaitMs ?? PEER_WAIT_MS, 10_000)
      while (Date.now() < deadline && !ctx.signal.aborted) {
        const s = this.swarm!.holders(rootHex).find(h => h.adverts.has(rootHex) && (!opts.from || h.remoteHex === opts.from) && (opts.manifestBase !== undefined || h.adverts.has(baseHex!)))
        if (!s) { await new Promise(resolve => setTimeout(resolve, 200)); continue }
        try {
          const got = await s.getManifestDelta(root, base.root, MAX_MANIFEST_BYTES)
          const manifest = got.delta ? applyManifestDelta(base, got.data) : decodeManifest(got.data)
          if (manifest.root.equals(root)) return { manifest, wireBytes: got.data.length }
          this.#d.log.warn('manifest delta from peer did not give the root', { peer: s.remoteHex.slice(0, 16) })
        } catch (err) {
          this.#d.log.warn('manifest delta from peer failed', { peer: s.remoteHex.slice(0, 16), error: (err as Error).message })
        }
        break
      }
    }
    const enc = await this.#getWholeManifest(root, opts, ctx)
    return { manifest: decodeManifest(enc, root), wireBytes: enc.length }
  }

  // The newest image here that a whole holder of `rootHex` (`from`, if given) advertises too.
  async #commonImage (rootHex: string, from?: string): Promise<string | undefined> {
    const holders = this.swarm!.holders(rootHex).filter(h => h.adverts.has(rootHex) && (!from || h.remoteHex === from))
    let best: ImageInfo | undefined
    for (const i of await this.#d.catalog.listImages()) {
      if (i.root !== rootHex && holders.some(h => h.adverts.has(i.root)) && (!best || i.createdAt > best.createdAt)) best = i
    }
    return best?.root
  }

  async #getWholeManifest (root: Buffer, opts: FetchOptions, ctx: JobContext): Promise<Buffer> {
    const swarm = this.swarm!
    const deadline = Date.now() + (opts.peerWaitMs ?? PEER_WAIT_MS)
    const rootHex = root.toString('hex')
    const tried = new Set<string>()
    let lastErr: unknown
    while (Date.now() < deadline) {
      if (ctx.signal.aborted) throw new OsfarmError('JOB_CANCELLED')
      const holders = swarm.holders(rootHex).filter(s => !tried.has(s.remoteHex) && (!opts.from || s.remoteHex === opts.from))
      const s = holders[0]
      if (!s) {
        if (tried.size && !swarm.holders(rootHex).length) tried.clear()
        await new Promise(resolve => setTimeout(resolve, 200))
        continue
      }
      tried.add(s.remoteHex)
      try {
        // Chunks after the first are spread over every whole holder.
        const helpers = swarm.holders(rootHex).filter(h => h.adverts.has(rootHex) && (!opts.from || h.remoteHex === opts.from))
        const enc = await s.getManifest(root, MAX_MANIFEST_BYTES, helpers)
        decodeManifest(enc, root)
        return enc
      } catch (err) {
        lastErr = err
        this.#d.log.warn('manifest from peer failed', { peer: s.remoteHex.slice(0, 16), error: (err as Error).message })
      }
    }
    throw NO_PEERS(`no peer sent the manifest of ${rootHex.slice(0, 16)}${lastErr ? `: ${(lastErr as Error).message}` : ''}`)
  }

  async #freeName (name: string, rootHex: string, version?: number): Promise<string> {
    if (version !== undefined && !(await this.#d.images.versions(name)).some(i => i.version === version || i.version === undefined)) return name
    try {
      await this.#d.images.checkName(name)
      return name
    } catch {
      return `${name}@${rootHex.slice(0, 12)}`
    }
  }

  // Fetches a crash interrupted go on as new jobs (they keep their verified blocks).
  async #resumeAll (): Promise<void> {
    const names = await fs.readdir(this.#stateDir).catch(() => [] as string[])
    const keep = new Set<string>()
    for (const rootHex of names) {
      const state = await readState(path.join(this.#stateDir, rootHex))
      if (!state) { await fs.rm(path.join(this.#stateDir, rootHex), { recursive: true, force: true }); continue }
      keep.add(state.volume)
      if (!this.swarm) continue
      const job = this.#startJob(state.root, state.name, state.advert ? parseAdvert(state.advert) : undefined, {
        ...(state.register === false ? { register: false } : {}),
        ...(state.background ? { priority: 'background' as const } : {})
      })
      this.#d.log.info('resuming fetch', { root: state.root, job: job.id })
    }
    // Fetch volumes no state refers to are leftovers.
    for (const v of await this.#d.store.list()) {
      if (v.kind === 'active' && v.key.startsWith(FETCH_VOLUME_PREFIX) && !keep.has(v.key)) await this.#d.store.remove(v.key).catch(() => {})
    }
  }
}

// The store's crash recovery, except for the volumes `keep` names (unfinished fetches).
export async function recoverVolumes (store: LayerStore, keep: (key: string) => boolean): Promise<string[]> {
  const orphans = (await store.list()).filter(v => v.kind === 'active' && !keep(v.key))
  for (const v of orphans) await store.remove(v.key)
  return orphans.map(v => v.key)
}

async function readState (dir: string): Promise<FetchState | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(dir, 'state.json'), 'utf8'))
  } catch {
    return undefined
  }
}

async function writeState (dir: string, state: FetchState): Promise<void> {
  const file = path.join(dir, 'state.json')
  await fs.writeFile(`${file}.tmp`, JSON.stringify(state))
  await fs.rename(`${file}.tmp`, file)
}

function serializeAdvert (a: Advert): SerializedAdvert {
  return {
    root: a.root.toString('hex'),
    name: a.name,
    size: a.size,
    blockSize: a.blockSize,
    specKey: a.specKey ? a.specKey.toString('hex') : null,
    builder: a.builder.toString('hex'),
    signature: a.signature.toString('hex'),
    created: a.created ?? null,
    labels: a.labels ?? [],
    extSignature: a.extSignature ? a.extSignature.toString('hex') : null,
    revision: a.revision ?? null,
    revSignature: a.revSignature ? a.revSignature.toString('hex') : null,
    version: a.version ?? null,
    verSignature: a.verSignature ? a.verSignature.toString('hex') : null
  }
}

function parseAdvert (s: SerializedAdvert): Advert {
  return {
    root: Buffer.from(s.root as string, 'hex'),
    name: s.name as string,
    size: s.size as number,
    blockSize: s.blockSize as number,
    specKey: s.specKey ? Buffer.from(s.specKey as string, 'hex') : null,
    builder: Buffer.from(s.builder as string, 'hex'),
    signature: Buffer.from(s.signature as string, 'hex'),
    ...(s.extSignature ? { created: s.created as number, labels: (s.labels as string[] | undefined) ?? [], extSignature: Buffer.from(s.extSignature as string, 'hex') } : {}),
    ...(s.revSignature ? { revision: s.revision as number, revSignature: Buffer.from(s.revSignature as string, 'hex') } : {}),
    ...(s.verSignature ? { version: s.version as number, verSignature: Buffer.from(s.verSignature as string, 'hex') } : {})
  }
}

