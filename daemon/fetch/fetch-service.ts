// Fetches: resolves a name or root to an image peers advertise, runs one fetch job per root at
// a time (fetch-job.ts), resumes unfinished ones at start, and forgets those no one wants.

import path from 'node:path'
import { AMBIGUOUS_ID, FLEET_NOT_CONFIGURED, IMAGE_NOT_FOUND } from '../../protocol/errors.js'
import type { FetchResult, JobInfo } from '../../protocol/rpc.js'
import type { Advert } from '../../protocol/wire.js'
import { parseAdvert, type AdvertBook } from '../adverts/advert-book.js'
import type { Catalog } from '../catalog/catalog.js'
import type { FleetService } from '../fleet/fleet-service.js'
import { parseKey } from '../fleet/fleet-config.js'
import type { ImageService } from '../images/images.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { LayerStore } from '../store/layer-store.js'
import type { Logger } from '../log.js'
import { FETCH_VOLUME_PREFIX, FetchJob, type FetchOptions } from './fetch-job.js'
import { Journal } from './journal.js'

export { FETCH_VOLUME_PREFIX, type FetchOptions } from './fetch-job.js'

const PEER_WAIT_MS = 30_000
const POLL_MS = 200

export interface FetchDeps {
  dataDir: string
  catalog: Catalog
  store: LayerStore
  images: ImageService
  jobs: JobManager
  fleet: FleetService
  adverts: AdvertBook
  log: Logger
}

export class FetchService {
  readonly #d: FetchDeps
  readonly #running = new Map<string, Promise<JobInfo>>()
  // Root → id of the newest fetch job started for it.
  readonly #jobOf = new Map<string, string>()

  constructor (deps: FetchDeps) {
    this.#d = deps
  }

  get #stateDir (): string { return path.join(this.#d.dataDir, 'transfers') }

  async start (): Promise<void> {
    await this.#resumeAll()
  }

  // Active volumes that belong to unfinished fetches survive crash recovery.
  static keepOnRecover (key: string): boolean {
    return key.startsWith(FETCH_VOLUME_PREFIX)
  }

  async fetch (ref: string, opts: FetchOptions = {}): Promise<JobInfo> {
    const swarm = this.#d.fleet.swarm
    if (!swarm) throw FLEET_NOT_CONFIGURED()
    if (opts.from) parseKey(opts.from)
    const { root, advert } = await this.#resolve(ref, opts.peerWaitMs ?? PEER_WAIT_MS)
    const name = opts.name ?? advert?.name ?? `fetched-${root.slice(0, 12)}`
    return this.#startJob(root, name, advert, opts)
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

  // Forgets an unfinished fetch of `rootHex` (its job must have ended): its progress, its
  // partial volume and the blocks it served.
  async discardFetch (rootHex: string): Promise<void> {
    if (this.fetchJobOf(rootHex)) return
    const journal = new Journal(this.#stateDir, rootHex)
    const state = await journal.readState()
    if (state) {
      this.#d.fleet.local.removeVolume(state.volume)
      const vol = await this.#d.store.stat(state.volume)
      if (vol?.kind === 'active') await this.#d.store.remove(state.volume).catch(() => {})
    }
    await journal.remove()
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

  async #fetchJob (rootHex: string, name: string, advert: Advert | undefined, opts: FetchOptions, ctx: JobContext): Promise<FetchResult> {
    const { fleet } = this.#d
    const swarm = fleet.swarm
    if (!swarm) throw FLEET_NOT_CONFIGURED()
    const have = (await this.#d.catalog.listImages()).find(i => i.root === rootHex)
    if (have && opts.register !== false) return { image: have, stats: undefined, alreadyPresent: true }
    const job = new FetchJob(
      { swarm, self: fleet.publicKey, catalog: this.#d.catalog, store: this.#d.store, images: this.#d.images, adverts: this.#d.adverts, local: fleet.local, log: this.#d.log },
      { root: rootHex, name, advert, opts, journal: new Journal(this.#stateDir, rootHex), peerWaitMs: opts.peerWaitMs ?? PEER_WAIT_MS },
      ctx
    )
    return await job.run()
  }

  // A root (64 hex digits) or an image name advertised by peers.
  async #resolve (ref: string, waitMs: number): Promise<{ root: string, advert?: Advert }> {
    const swarm = this.#d.fleet.swarm!
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
      await new Promise(resolve => setTimeout(resolve, POLL_MS))
    }
  }

  // Fetches a crash interrupted go on as new jobs (they keep their verified blocks).
  async #resumeAll (): Promise<void> {
    const keep = new Set<string>()
    for (const rootHex of await Journal.roots(this.#stateDir)) {
      const journal = new Journal(this.#stateDir, rootHex)
      const state = await journal.readState()
      if (!state) { await journal.remove(); continue }
      keep.add(state.volume)
      if (!this.#d.fleet.swarm) continue
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
