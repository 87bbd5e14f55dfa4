// The remote half of a fetch: follows the holders of the image in the peer pool, sends the
// requests the scheduler decides on, and takes their answers (verified blocks are already
// written by the worker that unpacked them), failures and stalls.

import type { EventEmitter } from 'node:events'
import { HASH_BYTES } from '../blocks/hash.js'
import { blockLength, type Manifest } from '../blocks/manifest.js'
import { BAD_BLOCK, NO_PEERS, type OsfarmError } from '../../protocol/errors.js'
import type { TransferStats } from '../../protocol/rpc.js'
import type { PeerSession } from '../fleet/peer-session.js'
import type { BlockBatch } from '../fleet/session-host.js'
import type { FleetEvents } from '../fleet/fleet-events.js'
import type { RateLimiter } from '../fleet/rate-limiter.js'
import type { FetchPlan } from './fetch-planner.js'
import { Scheduler, type PeerState, type Req } from './scheduler.js'

const PEER_WAIT_MS = 60_000
// With nothing in flight, peers are asked again this often: the scheduler may be holding back
// (another host's share of a roll-out, until that host has been silent long enough), and no
// answer or Have may come to wake it.
const IDLE_PUMP_MS = 1000

// The peers a fetch may ask: events 'holder' (rootHex, session, start?, count?), 'withdrawn'
// (rootHex, session) and 'peer-closed' (session).
export interface PeerPool extends EventEmitter<FleetEvents> {
  holders (rootHex: string): PeerSession[]
}

export interface RemoteFetchOptions {
  manifest: Manifest
  path: string
  plan: FetchPlan
  pool: PeerPool
  stats: TransferStats
  batch: number
  from?: Set<string>
  peerWaitMs?: number
  background?: boolean
  self?: string
  limiter?: RateLimiter
  // Entries whose blocks are now written (every index that holds each).
  onWritten: (indices: number[]) => void
  onFinished: () => void
  onFailed: (err: Error) => void
}

export class RemoteFetch {
  readonly #o: RemoteFetchOptions
  readonly #m: Manifest
  readonly #rootHex: string
  readonly #entries: FetchPlan['remote']
  readonly #sched: Scheduler
  readonly #sessions = new Map<PeerState, PeerSession>()
  #start = 0
  #stopped = false
  #waitTimer: NodeJS.Timeout | undefined
  #idleTimer: NodeJS.Timeout | undefined
  #limitTimer: NodeJS.Timeout | undefined

  constructor (options: RemoteFetchOptions) {
    this.#o = options
    this.#m = options.manifest
    this.#rootHex = options.manifest.root.toString('hex')
    this.#entries = options.plan.remote
    this.#sched = new Scheduler({
      entries: this.#entries,
      size: this.#m.size,
      blockSize: this.#m.blockSize,
      batch: options.batch,
      root: this.#m.root,
      ...(options.background ? { background: true } : {}),
      ...(options.self ? { self: options.self } : {})
    })
  }

  start (): void {
    this.#start = performance.now()
    if (this.#entries.length === 0) { this.#o.onFinished(); return }
    this.#o.pool.on('holder', this.#onHolder)
    this.#o.pool.on('peer-closed', this.#onClosed)
    this.#o.pool.on('withdrawn', this.#onWithdrawn)
    for (const s of this.#o.pool.holders(this.#rootHex)) this.#addPeer(s)
    this.#pumpAll()
  }

  // Cancels what is in flight; no more requests go out.
  stop (): void {
    this.#stopped = true
    for (const r of this.#sched.inflight()) this.#sessions.get(r.peer)?.cancel(r.id)
  }

  close (): void {
    this.#stopped = true
    clearTimeout(this.#waitTimer)
    clearTimeout(this.#idleTimer)
    clearTimeout(this.#limitTimer)
    this.#o.pool.off('holder', this.#onHolder)
    this.#o.pool.off('peer-closed', this.#onClosed)
    this.#o.pool.off('withdrawn', this.#onWithdrawn)
  }

  #onHolder = (rootHex: string, session: PeerSession, start?: number, count?: number) => {
    if (rootHex !== this.#rootHex) return
    const known = this.#sched.peer(session.remoteHex)
    if (known) {
      this.#sched.heard(known, start, count)
      if (this.#sessions.get(known) === session) this.#refreshHolding(known, session)
    }
    if (session.adverts.has(rootHex)) this.#sched.wholeHolderAppeared()
    this.#addPeer(session)
    this.#pumpAll()
  }

  // A holder that withdrew the image holds what its last Have said, if anything.
  #onWithdrawn = (rootHex: string, session: PeerSession) => {
    const known = this.#sched.peer(session.remoteHex)
    if (rootHex === this.#rootHex && known && this.#sessions.get(known) === session) this.#refreshHolding(known, session)
  }

  #onClosed = (session: PeerSession) => {
    const ps = this.#sched.peer(session.remoteHex)
    if (ps && this.#sessions.get(ps) === session) this.#removePeer(ps)
  }

  #addPeer (session: PeerSession): void {
    const hex = session.remoteHex
    if (this.#sched.isBanned(hex) || session.closed) return
    if (this.#o.from && !this.#o.from.has(hex)) return
    const old = this.#sched.peer(hex)
    if (old && this.#sessions.get(old) === session) return
    if (old) this.#removePeer(old)
    const ps = this.#sched.addPeer(hex, { whole: session.adverts.has(this.#rootHex), bits: session.haves.get(this.#rootHex) })
    this.#sessions.set(ps, session)
    this.#o.stats.peers[hex] ??= { host: session.remoteHello?.host ?? '', blocks: 0, rawBytes: 0, wireBytes: 0 }
  }

  #refreshHolding (ps: PeerState, session: PeerSession): void {
    this.#sched.setHolding(ps, session.adverts.has(this.#rootHex), session.haves.get(this.#rootHex))
  }

  #removePeer (ps: PeerState): void {
    const session = this.#sessions.get(ps)
    const reqs = this.#sched.removePeer(ps)
    if (!session) return
    this.#sessions.delete(ps)
    for (const r of reqs) session.cancel(r.id)
    this.#pumpAll()
  }

  #drop (ps: PeerState, err: OsfarmError): void {
    const session = this.#sessions.get(ps)
    this.#sched.ban(ps.hex)
    this.#o.stats.droppedPeers.push(ps.hex)
    this.#removePeer(ps)
    session?.destroy(err)
  }

  #pumpAll (): void {
    if (this.#stopped) return
    for (const ps of this.#sched.byRate()) this.#assign(ps)
    this.#checkStall()
  }

  #assign (ps: PeerState): void {
    const session = this.#sessions.get(ps)
    if (!session || this.#stopped) return
    for (const p of this.#sched.peers()) p.closed = this.#sessions.get(p)?.closed ?? true
    const limiter = this.#o.limiter
    const admit = limiter && ((blocks: number) => {
      const wait = limiter.reserve(blocks * this.#m.blockSize)
      if (wait <= 0) return true
      this.#limitTimer ??= setTimeout(() => { this.#limitTimer = undefined; this.#pumpAll() }, wait)
      return false
    })
    for (const req of this.#sched.assign(ps, admit || undefined)) this.#send(session, req)
  }

  #send (session: PeerSession, req: Req): void {
    const us = req.us
    const hashes = Buffer.allocUnsafe(us.length * HASH_BYTES)
    for (let j = 0; j < us.length; j++) {
      const at = this.#entries[us[j]!]!.indices[0]! * HASH_BYTES
      this.#m.hashes.copy(hashes, j * HASH_BYTES, at, at + HASH_BYTES)
    }
    const bs = this.#m.blockSize
    const into = { path: this.#o.path, at: us.map(u => this.#entries[u]!.indices.map(i => i * bs)) }
    session.getBlocks(hashes, id => { req.id = id }, this.#o.background ? this.#m.root : undefined, into).then(
      batch => this.#onBatch(req, batch),
      err => this.#onFail(req, err)
    ).catch(err => this.#o.onFailed(err))
  }

  #onBatch (req: Req, batch: BlockBatch): void {
    const ps = req.peer
    // Checked, and written where valid, by the worker that unpacked the answer.
    const out = this.#sched.answer(req, batch.sizes, j => batch.valid?.[j] === 1, u => blockLength(this.#m, this.#entries[u]!.indices[0]!))
    if (!out) return
    const s = this.#o.stats
    if (out.bad !== undefined) {
      s.badBlocks++
      this.#drop(ps, BAD_BLOCK(`block ${this.#entries[out.bad]!.indices[0]} from peer ${ps.hex.slice(0, 16)} does not match its hash`))
      return
    }
    const now = performance.now()
    const p = s.peers[ps.hex]!
    p.blocks += out.got.length
    p.rawBytes += out.raw
    p.wireBytes += batch.wireBytes ?? 0
    s.received += out.got.length
    s.rawBytes += out.raw
    s.wireBytes += batch.wireBytes ?? 0
    s.rate = s.rawBytes * 1000 / Math.max(1, now - this.#start)
    s.remoteMs = Math.round(now - this.#start)
    // Duplicates of what just arrived are no longer needed.
    if (this.#sched.pending === 0) for (const r of this.#sched.takeDone()) this.#sessions.get(r.peer)?.cancel(r.id)
    const written: number[] = []
    for (const u of out.got) written.push(...this.#entries[u]!.indices)
    if (written.length) this.#o.onWritten(written)
    if (this.#sched.finished) { this.#o.onFinished(); return }
    this.#assign(ps)
    this.#pumpAll()
  }

  #onFail (req: Req, err: Error): void {
    const ps = req.peer
    const session = this.#sessions.get(ps)
    const code = (err as OsfarmError).code
    const what = this.#sched.failed(req, { closed: session?.closed ?? true, ...(code ? { code } : {}) })
    if (!what) return
    // The target could not be written: no peer can help with that.
    if (code === 'IO_ERROR') { this.#o.onFailed(err); return }
    if (what === 'remove' || what === 'ban') this.#removePeer(ps)
    this.#pumpAll()
  }

  #checkStall (): void {
    if (this.#sched.busy || this.#sched.finished || this.#stopped) {
      clearTimeout(this.#waitTimer)
      this.#waitTimer = undefined
      return
    }
    this.#idleTimer ??= setTimeout(() => { this.#idleTimer = undefined; this.#pumpAll() }, IDLE_PUMP_MS)
    this.#waitTimer ??= setTimeout(() => {
      this.#waitTimer = undefined
      if (!this.#sched.busy && !this.#sched.finished) {
        this.#o.onFailed(NO_PEERS(`no reachable peer holds the ${this.#sched.remaining} missing blocks of ${this.#rootHex.slice(0, 16)}`))
      }
    }, this.#o.peerWaitMs ?? PEER_WAIT_MS)
  }
}
