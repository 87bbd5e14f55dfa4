// Seeding: holds the images the seed policies want before anyone asks for them. The host's own
// policies and the fleet's defaults (gossiped, signed by an allowed host) are applied to every
// advert this host hears; wanted images are fetched as background jobs, which swarm (each
// receiver serves what it has to the others) and yield to users' jobs; images seeding brought
// are released when no policy wants them any more or the seed cap is passed.

import type { FleetSwarm } from '../fleet/fleet-swarm.js'
import type { PeerSession } from '../fleet/peer-session.js'
import type { Catalog } from '../catalog/catalog.js'
import type { ImageService } from '../images/images.js'
import type { JobManager } from '../jobs/jobs.js'
import type { LayerStore } from '../store/layer-store.js'
import type { FleetService } from '../fleet/fleet-service.js'
import type { AdvertBook } from '../adverts/advert-book.js'
import type { FetchService } from '../fetch/fetch-service.js'
import type { Logger } from '../log.js'
import type { FetchResult, ImageInfo, JobInfo, SeedHolder, SeedImageStatus, SeedLocalState, SeedPolicy, SeedPolicyParams, SeedStatus } from '../../protocol/rpc.js'
import { BAD_PARAMS, NOT_FOUND } from '../../protocol/errors.js'
import { seedDefaultsSigningBytes, type SeedDefaults } from '../../protocol/wire.js'
import { sign, verify } from '../fleet/identity.js'
import { RateLimiter } from '../fleet/rate-limiter.js'
import { checkPolicy, chooseWanted, MAX_POLICIES, newPolicy, strictestUploadPolicy, uploadPolicy, type Offer, type Want } from './seed-policy.js'

// Seed fetches at once; a failed one is tried again after RETRY_MS.
const CONCURRENCY = 2
const RETRY_MS = 30_000
const PEER_WAIT_MS = 60_000
const DEBOUNCE_MS = 300
const SWEEP_MS = 5_000
// Adverts with this label are pre-staged disks meant for one host: never seeded.
export const PRESTAGE_LABEL = 'osfarm/prestage'

export interface SeedDeps {
  catalog: Catalog
  images: ImageService
  jobs: JobManager
  store: LayerStore
  fleet: FleetService
  adverts: AdvertBook
  fetches: FetchService
  log: Logger
}

interface Defaults {
  version: number
  policies: string
  author: string
  signature: string
}

interface Held {
  imageId: string
  at: number
}

export class SeedService {
  readonly #d: SeedDeps
  readonly #db
  readonly #policies = new Map<string, SeedPolicy>()
  #defaults: Defaults | undefined
  #fleetPolicies: SeedPolicy[] = []
  readonly #held = new Map<string, Held>()
  #cap: number | null = null
  // Root → the seed fetch job running for it.
  readonly #running = new Map<string, string>()
  // Roots whose fetch yielded to a user's job (resumed later), or is to be discarded.
  readonly #paused = new Set<string>()
  readonly #discard = new Set<string>()
  readonly #failed = new Map<string, { at: number, error: string }>()
  readonly #overCap = new Set<string>()
  readonly #waiting = new Map<string, string>()
  readonly #firstSeen = new Map<string, number>()
  #wanted = new Map<string, Want>()
  // Per policy: its upload limit for seeding requests, and the count of what went out under it.
  readonly #uploads = new Map<string, RateLimiter>()
  #timer: NodeJS.Timeout | undefined
  #sweeper: NodeJS.Timeout | undefined
  #busy: Promise<void> | undefined
  #again = false
  #stopped = false

  constructor (deps: SeedDeps) {
    this.#d = deps
    this.#db = deps.catalog.sublevel<unknown>('seed')
  }

  async start (): Promise<void> {
    for await (const [key, value] of this.#db.iterator()) {
      if (key.startsWith('policy:')) {
        try { this.#policies.set(key.slice(7), checkPolicy(value as SeedPolicy)) } catch {}
      } else if (key.startsWith('held:')) this.#held.set(key.slice(5), value as Held)
      else if (key === 'defaults') this.#setDefaults(value as Defaults)
      else if (key === 'cap') this.#cap = (value as number) || null
    }
    this.#d.images.subscribe({ registered: () => this.schedule(), removed: () => this.schedule(), relabelled: () => this.schedule() })
    this.#d.jobs.onActivity((job, event) => this.#onJob(job, event))
    this.#d.fleet.setBackgroundLimits(rootHex => this.#uploadLimiter(rootHex))
    this.#d.fleet.onSwarm(swarm => this.#attach(swarm))
    this.#sweeper = setInterval(() => this.schedule(), SWEEP_MS)
    this.#sweeper.unref()
    this.schedule()
  }

  async stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    clearInterval(this.#sweeper)
    await this.#busy
  }

  // ---- policies ----

  policies (): SeedPolicy[] {
    return [...this.#policies.values(), ...this.#fleetPolicies].sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  // The policies with what this host has served under each since it started.
  list (): SeedPolicy[] {
    return this.policies().map(p => ({ ...p, uploaded: this.#uploads.get(p.id)?.bytes ?? 0 }))
  }

  async add (params: SeedPolicyParams): Promise<SeedPolicy> {
    if (this.policies().length >= MAX_POLICIES) throw BAD_PARAMS(`at most ${MAX_POLICIES} seed policies`)
    const policy = newPolicy(params, params.fleet ? 'fleet' : 'host')
    if (policy.scope === 'fleet') {
      await this.#publish([...this.#fleetPolicies, policy])
    } else {
      this.#policies.set(policy.id, policy)
      await this.#db.put(`policy:${policy.id}`, policy)
    }
    this.#d.log.info('seed policy added', { id: policy.id, match: policy.match, label: policy.label ?? '-', keep: policy.keep, scope: policy.scope })
    this.schedule()
    return policy
  }

  async remove (id: string): Promise<{ id: string, removed: boolean }> {
    if (this.#policies.delete(id)) {
      await this.#db.del(`policy:${id}`)
    } else if (this.#fleetPolicies.some(p => p.id === id)) {
      await this.#publish(this.#fleetPolicies.filter(p => p.id !== id))
    } else {
      throw NOT_FOUND(`no seed policy "${id}"`)
    }
    this.#overCap.clear()
    this.#d.log.info('seed policy removed', { id })
    this.schedule()
    return { id, removed: true }
  }

  async setCap (bytes: number): Promise<{ cap: number | null }> {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw BAD_PARAMS('the cap is a number of bytes (0: none)')
    this.#cap = bytes || null
    await this.#db.put('cap', bytes)
    this.#overCap.clear()
    this.schedule()
    return { cap: this.#cap }
  }

  // ---- fleet defaults: the newest signed version wins, and is passed on ----

  #setDefaults (d: Defaults): boolean {
    try {
      const list = JSON.parse(d.policies) as SeedPolicy[]
      if (!Array.isArray(list) || list.length > MAX_POLICIES) return false
      this.#fleetPolicies = list.map(checkPolicy).filter(p => p.scope === 'fleet')
      this.#defaults = d
      return true
    } catch {
      return false
    }
  }

  async #publish (policies: SeedPolicy[]): Promise<void> {
    const kp = this.#d.fleet.keyPair
    const body = { version: Math.max(Date.now(), (this.#defaults?.version ?? 0) + 1), policies: JSON.stringify(policies), author: kp.publicKey }
    const d: Defaults = { version: body.version, policies: body.policies, author: kp.publicKey.toString('hex'), signature: sign(seedDefaultsSigningBytes(body), kp).toString('hex') }
    this.#setDefaults(d)
    await this.#db.put('defaults', d)
    for (const s of this.#d.fleet.sessions()) this.#sendDefaults(s)
  }

  #sendDefaults (session: PeerSession): void {
    const d = this.#defaults
    if (!d) return
    session.sendIfSupported('SeedDefaults', { version: d.version, policies: d.policies, author: Buffer.from(d.author, 'hex'), signature: Buffer.from(d.signature, 'hex') })
  }

  #onDefaults (swarm: FleetSwarm, session: PeerSession, body: SeedDefaults): void {
    const mine = this.#defaults?.version ?? 0
    if (body.version < mine) { this.#sendDefaults(session); return }
    if (body.version === mine) return
    if (!swarm.isAllowed(body.author) || !verify(seedDefaultsSigningBytes(body), body.signature, body.author)) {
      this.#d.log.warn('seed defaults with a bad signature or author dropped', { peer: session.remoteHex.slice(0, 16) })
      return
    }
    const d: Defaults = { version: body.version, policies: body.policies, author: body.author.toString('hex'), signature: body.signature.toString('hex') }
    if (!this.#setDefaults(d)) {
      this.#d.log.warn('malformed seed defaults dropped', { peer: session.remoteHex.slice(0, 16) })
      return
    }
    this.#d.log.info('fleet seed defaults adopted', { version: d.version, policies: this.#fleetPolicies.length, author: d.author.slice(0, 16) })
    this.#db.put('defaults', d).catch(() => {})
    for (const s of swarm.sessions.values()) if (s !== session) this.#sendDefaults(s)
    this.#overCap.clear()
    this.schedule()
  }

  #attach (swarm: FleetSwarm): void {
    const kick = () => this.schedule()
    swarm.on('holder', kick)
    swarm.on('offer', kick)
    swarm.on('withdrawn', kick)
    swarm.on('peer-closed', kick)
    swarm.on('peer', (s: PeerSession) => { this.#sendDefaults(s); kick() })
    swarm.on('SeedDefaults', (s: PeerSession, body: SeedDefaults) => this.#onDefaults(swarm, s, body))
    this.#syncUploads(this.policies())
    kick()
  }

  // ---- upload limits ----

  #syncUploads (policies: SeedPolicy[]): void {
    for (const p of policies) {
      const limiter = this.#uploads.get(p.id) ?? new RateLimiter(0)
      limiter.rate = p.uploadLimit
      this.#uploads.set(p.id, limiter)
    }
    for (const id of this.#uploads.keys()) if (!policies.some(p => p.id === id)) this.#uploads.delete(id)
  }

  // A seeding request for `rootHex` goes out under the policy that wants that image here (an
  // image no policy wants: no seeding limit); one that names no image, under the strictest.
  #uploadLimiter (rootHex?: string): RateLimiter | undefined {
    const p = rootHex === undefined ? strictestUploadPolicy(this.policies()) : uploadPolicy(this.#wanted.get(rootHex)?.policies ?? [])
    return p && this.#uploads.get(p.id)
  }

  // ---- applying the policies ----

  schedule (): void {
    if (this.#stopped || this.#timer) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      if (this.#busy) { this.#again = true; return }
      this.#busy = this.#reconcile().catch(err => this.#d.log.warn('seed pass failed', { error: (err as Error).message })).finally(() => {
        this.#busy = undefined
        if (this.#again) { this.#again = false; this.schedule() }
      })
    }, DEBOUNCE_MS)
  }

  #onJob (job: JobInfo, event: 'start' | 'end'): void {
    if (job.priority !== 'background') {
      // A user's job: seeding steps aside at once and comes back when none runs.
      if (event === 'start') this.#yield()
      else this.schedule()
      return
    }
    if (event !== 'end') return
    const root = [...this.#running].find(([, id]) => id === job.id)?.[0]
    if (!root) return
    this.#running.delete(root)
    if (job.state === 'done') {
      const r = job.result as FetchResult
      this.#failed.delete(root)
      if (!r.alreadyPresent && r.image?.id) {
        const held = { imageId: r.image.id, at: Date.now() }
        this.#held.set(root, held)
        this.#db.put(`held:${root}`, held).catch(() => {})
        this.#d.log.info('seeded image', { name: r.image.name, root: root.slice(0, 16), received: r.stats?.received ?? 0, ms: r.stats?.elapsedMs ?? 0 })
      }
    } else if (job.state === 'failed') {
      this.#failed.set(root, { at: Date.now(), error: job.error?.message ?? 'failed' })
    } else if (!this.#paused.has(root)) {
      this.#discard.add(root)
    }
    this.schedule()
  }

  #yield (): void {
    for (const [root, id] of this.#running) {
      this.#paused.add(root)
      this.#d.jobs.cancel(id)
    }
  }

  async #offers (swarm: FleetSwarm, images: ImageInfo[]): Promise<Map<string, Offer>> {
    const offers = new Map<string, Offer>()
    const now = Date.now()
    const add = (root: string, name: string, size: number, labels: string[], created: number | null | undefined) => {
      if (offers.has(root) || labels.some(l => l.startsWith(PRESTAGE_LABEL + '='))) return
      if (!this.#firstSeen.has(root)) this.#firstSeen.set(root, now)
      offers.set(root, { root, name, size, labels, created: created || this.#firstSeen.get(root)! })
    }
    for (const image of images) {
      const a = await this.#d.adverts.get(image.root)
      add(image.root, a?.name ?? image.name, image.size, a?.labels ?? image.labels ?? [], a?.created ?? Date.parse(image.createdAt))
    }
    for (const { advert: a } of swarm.peerAdverts()) add(a.root.toString('hex'), a.name, a.size, a.labels ?? [], a.created)
    // Heard of through peers: in a fleet larger than one host's connections, most images.
    for (const a of swarm.offers()) add(a.root.toString('hex'), a.name, a.size, a.labels ?? [], a.created)
    return offers
  }

  async #reconcile (): Promise<void> {
    const swarm = this.#d.fleet.swarm
    if (!swarm || this.#stopped) return
    const policies = this.policies()
    this.#syncUploads(policies)
    const images = await this.#d.images.list()
    const byId = new Map(images.map(i => [i.id, i]))
    const local = new Set(images.map(i => i.root))
    for (const [root, h] of this.#held) {
      if (!byId.has(h.imageId)) { this.#held.delete(root); await this.#db.del(`held:${root}`) }
    }
    const wanted = chooseWanted(policies, [...(await this.#offers(swarm, images)).values()])
    this.#wanted = wanted

    // Release what no policy wants; stop and forget fetches of it.
    for (const [root, h] of [...this.#held]) {
      if (wanted.has(root)) continue
      // An older version stays until the one replacing it is here: its fetch reuses these blocks.
      const image = byId.get(h.imageId)
      if (image && [...wanted.values()].some(w => w.offer.name === image.name && !local.has(w.offer.root))) continue
      await this.#release(root, h, 'no policy wants it')
    }
    for (const [root, id] of this.#running) {
      if (!wanted.has(root)) { this.#paused.delete(root); this.#discard.add(root); this.#d.jobs.cancel(id) }
    }
    for (const root of this.#paused) if (!wanted.has(root)) { this.#paused.delete(root); this.#discard.add(root) }
    for (const root of [...this.#discard]) {
      if (this.#running.has(root) || this.#d.fetches.fetchJobOf(root)) continue
      this.#discard.delete(root)
      if (!wanted.has(root)) await this.#d.fetches.discardFetch(root).catch(() => {})
    }

    // Over the cap: the lowest priority, oldest images go first, and are not fetched again
    // until the cap or the policies change.
    let heldBytes = this.#heldBytes(byId)
    if (this.#cap !== null && heldBytes > this.#cap) {
      const order = [...this.#held].sort(([a], [b]) => (wanted.get(a)?.priority ?? 0) - (wanted.get(b)?.priority ?? 0) || (wanted.get(a)?.offer.created ?? 0) - (wanted.get(b)?.offer.created ?? 0))
      for (const [root, h] of order) {
        if (heldBytes <= this.#cap) break
        const image = byId.get(h.imageId)
        heldBytes -= image ? dataBytes(image) : 0
        this.#overCap.add(root)
        await this.#release(root, h, 'over the seed cap')
      }
    }

    this.#waiting.clear()
    if (this.#d.jobs.userRunning > 0) { this.#yield(); return }
    const queue = [...wanted.values()]
      .filter(w => !local.has(w.offer.root) && !this.#running.has(w.offer.root))
      .sort((a, b) => b.priority - a.priority || b.offer.created - a.offer.created)
    for (const w of queue) {
      const root = w.offer.root
      if (this.#overCap.has(root)) { this.#waiting.set(root, 'over the seed cap'); continue }
      const failed = this.#failed.get(root)
      if (failed && Date.now() - failed.at < RETRY_MS) { this.#waiting.set(root, `retrying after: ${failed.error}`); continue }
      if (this.#d.fetches.fetchJobOf(root)) { this.#waiting.set(root, 'a user fetch of it runs'); continue }
      if (this.#running.size >= CONCURRENCY) { this.#waiting.set(root, 'queued'); continue }
      if (this.#cap !== null && heldBytes >= this.#cap) { this.#waiting.set(root, 'the seed cap is reached'); continue }
      const usage = await this.#d.store.usage()
      if (usage.bytesFree < w.offer.size) { this.#waiting.set(root, 'the store has too little free space'); continue }
      const job = await this.#d.fetches.fetch(root, { priority: 'background', name: w.offer.name, peerWaitMs: PEER_WAIT_MS, ...(w.downloadLimit ? { limit: w.downloadLimit } : {}) })
      this.#running.set(root, job.id)
      this.#paused.delete(root)
      this.#d.log.info('seeding', { name: w.offer.name, root: root.slice(0, 16), job: job.id, policy: w.policies[0]!.id })
    }
  }

  async #release (root: string, h: Held, why: string): Promise<void> {
    this.#held.delete(root)
    await this.#db.del(`held:${root}`)
    await this.#d.images.remove(h.imageId).catch(err => this.#d.log.warn('cannot release a seeded image', { root: root.slice(0, 16), error: (err as Error).message }))
    this.#d.log.info('released seeded image', { root: root.slice(0, 16), why })
  }

  #heldBytes (byId: Map<string, ImageInfo>): number {
    let n = 0
    for (const h of this.#held.values()) {
      const image = byId.get(h.imageId)
      if (image) n += dataBytes(image)
    }
    return n
  }

  // ---- status ----

  async status (): Promise<SeedStatus> {
    const swarm = this.#d.fleet.swarm
    const images = await this.#d.images.list()
    const byRoot = new Map(images.map(i => [i.root, i]))
    const offers = swarm ? await this.#offers(swarm, images) : new Map<string, Offer>()
    const roots = new Set([...this.#wanted.keys(), ...this.#held.keys(), ...this.#running.keys(), ...this.#paused])
    const sessions = this.#d.fleet.sessions().filter(s => s.remoteHello && !s.closed)
    const out: SeedImageStatus[] = []
    for (const root of roots) {
      const offer = offers.get(root) ?? this.#wanted.get(root)?.offer
      if (!offer) continue
      const total = Math.max(1, Math.ceil(offer.size / (byRoot.get(root)?.blockSize ?? 4096)))
      const holders: SeedHolder[] = []
      let sum = 0
      for (const s of sessions) {
        if (s.adverts.has(root)) {
          holders.push({ key: s.remoteHex, host: s.remoteHello!.host, complete: true })
          sum += 1
        } else {
          const bits = s.haves.get(root)
          if (!bits) continue
          const blocks = Math.min(total, popcount(bits))
          holders.push({ key: s.remoteHex, host: s.remoteHello!.host, complete: false, blocks, total })
          sum += blocks / total
        }
      }
      const { state, progress, reason, job } = this.#localState(root, byRoot)
      out.push({
        root,
        name: offer.name,
        size: offer.size,
        created: offer.created ? new Date(offer.created).toISOString() : null,
        labels: offer.labels,
        policies: this.#wanted.get(root)?.policies.map(p => p.id) ?? [],
        local: state,
        ...(reason ? { reason } : {}),
        ...(job ? { job } : {}),
        progress,
        holders,
        fleet: { hosts: sessions.length + 1, complete: holders.filter(h => h.complete).length + (state === 'held' ? 1 : 0), progress: (sum + progress) / (sessions.length + 1) }
      })
    }
    out.sort((a, b) => a.name.localeCompare(b.name) || (b.created ?? '').localeCompare(a.created ?? ''))
    const byId = new Map(images.map(i => [i.id, i]))
    return {
      policies: this.policies(),
      images: out,
      paused: this.#d.jobs.userRunning > 0 && (this.#running.size > 0 || this.#paused.size > 0 || this.#waiting.size > 0),
      heldBytes: this.#heldBytes(byId),
      cap: this.#cap,
      fleetDefaultsVersion: this.#defaults?.version ?? 0
    }
  }

  #localState (root: string, byRoot: Map<string, ImageInfo>): { state: SeedLocalState, progress: number, reason?: string, job?: string } {
    if (byRoot.has(root)) return { state: this.#wanted.has(root) ? 'held' : 'unwanted', progress: 1 }
    const id = this.#running.get(root)
    if (id) {
      let progress = 0
      try {
        const p = this.#d.jobs.get(id).progress
        progress = p.phase.startsWith('fetch') && p.total ? p.done / p.total : p.phase === 'register' ? 1 : 0
      } catch {}
      return { state: 'fetching', progress, job: id }
    }
    if (this.#paused.has(root)) return { state: 'paused', progress: 0, reason: 'a user\'s job runs' }
    const failed = this.#failed.get(root)
    const waiting = this.#waiting.get(root)
    if (waiting === 'queued') return { state: 'queued', progress: 0 }
    if (waiting) return { state: failed ? 'failed' : 'waiting', progress: 0, reason: waiting }
    return { state: this.#wanted.has(root) ? 'queued' : 'unwanted', progress: 0 }
  }
}

function dataBytes (image: ImageInfo): number {
  return (image.blocks - image.zeroBlocks) * image.blockSize
}

function popcount (bits: Buffer): number {
  let n = 0
  for (let i = 0; i < bits.length; i++) {
    let b = bits[i]!
    while (b) { b &= b - 1; n++ }
  }
  return n
}
