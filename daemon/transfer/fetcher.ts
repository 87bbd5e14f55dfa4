// The fetch engine: fills a target volume with the blocks of a manifest that it lacks.
//
// DEV DOCS — the request flow
//   The planner has already sorted every block: in place (the target is a snapshot of the local
//   volume with the most same-offset matches: no I/O), zero (a hole; written as zeros and holes
//   dug only where the parent had data, before anything else), local (from another local
//   volume) and remote, one entry per distinct hash with every index that holds it.
//   Local copies and remote fetching run at the same time. A local copy is a clone of the
//   source's extents (xfs_io reflink, one call for every run contiguous in both files) where
//   the filesystem shares extents, so it moves no bytes and takes no CPU from the wire; what it
//   refuses is read and written.
//
//   Remote: each holder of the root (whole, by advert, or part-way, by Have bitfield) is a peer
//   with a window of blocks asked for and not yet answered, sized from its measured rate (about
//   QUEUE_SECONDS of data, MIN_WINDOW..MAX_WINDOW full requests' worth). A request carries up to
//   BATCH_BYTES of hashes, taken in index order from a cursor over the pending entries that peer
//   has, so reads on the peer and writes here are long runs. Peers pull work as their answers come
//   back, so a faster peer gets more; that is the rate-weighted spread. With several peers,
//   requests shrink once what is pending would not fill every peer's minimum window, so the peers
//   finish together. When nothing is pending but requests are out (the endgame), an idle peer asks
//   again, one request at a time, for blocks in flight at the slowest peers that it would bring
//   sooner (by the measured rates and what is queued ahead of them), latest first; the first valid
//   answer wins and the other request is cancelled.
//
//   Every block is checked against its hash (BLAKE3) and length before it is written (the hash
//   on a block-pool worker, as the response is unpacked there); one bad block drops the peer
//   (its session is closed and it is banned from this fetch) and its requests go back to
//   pending. A peer that leaves, times out or lacks a block has its requests
//   requeued the same way. Verified blocks of one answer are written by the worker that
//   unpacked them (received data never crosses to the main thread, whose garbage collector it
//   would keep busy), one writev per contiguous run, at every index that holds the hash; a
//   failed write there fails the fetch (IO_ERROR), not the peer.
//
//   Progress: a bit per block, set after the write completes. Every FLUSH_MS, and after every
//   FLUSH_BYTES written, the target is fdatasync'ed and then the bitfield (a copy taken before
//   the sync) is saved; a restart resumes from it. The same bits go to peers as Have, and the
//   blocks become servable at once.
//   onWritten hears of every block once it is in place and final: the fetch job reads it back
//   and checks it then (verify.ts), so the whole-image check overlaps the transfer.
//
//   If no peer can supply a pending block for PEER_WAIT_MS, the fetch fails with NO_PEERS (its
//   progress stays; running it again resumes).
//
//   Swarming (background fetches: seeding, where many hosts fetch one image at once): a whole
//   holder is given only blocks no connected part-way peer has, and of those each host asks
//   first for its own share (request-sized chunks of the image, dealt out by rank among the
//   hosts fetching it, in an order derived from the root), so the source's upload goes to
//   blocks no receiver has and two receivers rarely ask it for the same ones. A part-way peer
//   is asked for what it announced: each Have's range of block indices is kept as a hint, and
//   only those blocks are looked at (a scan of every pending entry at every Have took a quarter
//   of a receiver's CPU in a 6-host roll-out); blocks given back to pending become hints again
//   for the peers that hold them. Receivers pass what they get on to each other; Have updates
//   go out every quarter second (transfer-service).

import { EventEmitter } from 'node:events'
import fs from 'node:fs/promises'
import { execa } from 'execa'
import { HASH_BYTES } from '../blocks/hash.js'
import { blockCount, blockLength, type Manifest } from '../blocks/manifest.js'
import { BAD_BLOCK, JOB_CANCELLED, NO_PEERS, OsfarmError } from '../../protocol/errors.js'
import { MAX_HASHES_PER_REQUEST, MAX_BLOCK_BYTES } from '../../protocol/wire.js'
import type { PeerSession, BlockBatch } from '../swarm/peer-session.js'
import type { FetchPlan } from './fetch-planner.js'
import type { TransferStats } from '../../protocol/rpc.js'
import type { LocalBlocks } from './local-blocks.js'
import type { Progress } from './progress.js'
import type { RateLimiter } from '../swarm/rate-limiter.js'
import { cloneRanges } from '../tools/xfs-io.js'

// A response's raw cap: fewer, larger frames and packs (zstd gains too).
const BATCH_BYTES = 1 << 20
const MIN_WINDOW = 8
const MIN_WINDOW_SWARM = 2
const MAX_WINDOW = 64
// Requests in flight to one peer at most, however small they are.
const MAX_REQUESTS = 256
const QUEUE_SECONDS = 0.25
const FLUSH_MS = 1000
// Also flush once this much was written since the last flush: writeback then runs during the
// transfer, and the last sync (which the job waits for) has only the tail to write.
const FLUSH_BYTES = 16 << 20
const PEER_WAIT_MS = 60_000
// Pending entries scanned per assignment, so a partial peer with few blocks costs little.
const SCAN_LIMIT = 16_384
// Background: hint ranges kept per part-way peer before they fold into one.
const MAX_HINTS = 256
const MAX_DUPLICATES = 1
// Smallest request near the end of a fetch from several peers.
const TAIL_MIN_BLOCKS = 32
// Background fetches duplicate a request in the endgame only once it is this old.
const ENDGAME_AGE_MS = 1500
const ENDGAME_WHOLE_AGE_MS = 5000
// Background: another host's share is asked of a whole holder only once that host has been
// silent this long.
const OWNER_STALL_MS = 3000
const MAX_PEER_FAILURES = 3
// Foreground endgame: a request is raced when this peer would bring it this much sooner.
const ENDGAME_MARGIN = 1.25
const LOCAL_BATCH_BLOCKS = 256
// Contiguous runs cloned per xfs_io call (progress and cancellation are checked between).
const CLONE_BATCH_RUNS = 8192
const MIN_PUNCH_BLOCKS = 16
const MAX_PUNCH_CALLS = 64

export interface PeerPool extends EventEmitter {
  holders (rootHex: string): PeerSession[]
}

export type FetchStats = TransferStats

export interface FetcherOptions {
  manifest: Manifest
  volume: string
  path: string
  plan: FetchPlan
  progress: Progress
  pool: PeerPool
  local: LocalBlocks
  stats: FetchStats
  from?: Set<string>
  signal?: AbortSignal
  peerWaitMs?: number
  onFlush?: (bits: Buffer) => void
  onProgress?: (done: number, total: number) => void
  // Background work (seeding): peers serve these requests after everyone else's.
  background?: boolean
  // This host's key: background fetches split the blocks to ask whole holders for among the
  // hosts fetching the same image (those that sent a Have for it).
  self?: string
  // Called with block indices once written or copied (servable, final), before they are synced.
  onWritten?: (indices: number[]) => void
  // Called once every block is written, before the last sync.
  onAllWritten?: () => void
  // Caps how fast this fetch asks for blocks (raw bytes per second).
  limiter?: RateLimiter
}

interface Req {
  peer: PeerState
  us: number[]
  sentAt: number
  id: number
  dup: boolean
}

interface PeerState {
  hex: string
  session: PeerSession
  inflight: Set<Req>
  missing: Set<number>
  rate: number
  lastAt: number
  failures: number
  // Background, a part-way peer: ranges of block indices [from, to) it announced that have not
  // been looked at yet, flat.
  hints: number[]
  // When it last announced blocks (a Have) for this image.
  heardAt: number
  // What it holds of this image, as of its last advert or Have (read on every scan: kept here
  // rather than looked up in the session's maps by root each time).
  whole: boolean
  bits: Buffer | undefined
}

export class Fetcher {
  readonly #o: FetcherOptions
  readonly #m: Manifest
  readonly #rootHex: string
  readonly #entries: FetchPlan['remote']
  readonly #state: Uint8Array
  readonly #copies: Uint8Array
  readonly #batch: number
  readonly #peers = new Map<string, PeerState>()
  readonly #banned = new Set<string>()
  #cursor = 0
  #pending: number
  #done = 0
  #fh!: fs.FileHandle
  #dirty = false
  #writtenSinceFlush = 0
  #flushing: Promise<void> = Promise.resolve()
  #failure: Error | undefined
  #finish!: () => void
  #fail!: (err: Error) => void
  #waitTimer: NodeJS.Timeout | undefined
  #remoteStart = 0
  #completed = 0
  #limitTimer: NodeJS.Timeout | undefined
  // Background: request-sized chunks of the image (by block index) in an order from the root.
  #chunks: { order: Uint32Array, start: Uint32Array } | undefined
  #front = 0
  #back = 0
  // Chunks with nothing a whole holder may be asked for (done, in flight, or a part-way peer's).
  readonly #blocked = new Set<number>()
  #swarmView: { partial: PeerState[], fetching: string[], rank: number } | undefined
  #entryIndex: Int32Array | undefined
  readonly #total: number

  constructor (options: FetcherOptions) {
    this.#o = options
    this.#m = options.manifest
    this.#rootHex = options.manifest.root.toString('hex')
    this.#entries = options.plan.remote
    this.#state = new Uint8Array(this.#entries.length)
    this.#copies = new Uint8Array(this.#entries.length)
    this.#pending = this.#entries.length
    this.#batch = Math.max(1, Math.min(MAX_HASHES_PER_REQUEST, Math.floor(Math.min(BATCH_BYTES, MAX_BLOCK_BYTES) / options.manifest.blockSize)))
    this.#total = options.plan.remoteBlocks + options.plan.local.length + options.plan.zeroOverParent.length
  }

  async run (): Promise<void> {
    const o = this.#o
    this.#fh = await fs.open(o.path, 'r+')
    const flusher = setInterval(() => { this.#flush().catch(err => this.#abort(err)) }, FLUSH_MS)
    const onAbort = () => this.#fail(JOB_CANCELLED())
    try {
      const remote = new Promise<void>((resolve, reject) => { this.#finish = resolve; this.#fail = reject })
      // Rejections are read through Promise.all below or not at all (an earlier step failed).
      remote.catch(() => {})
      o.signal?.addEventListener('abort', onAbort, { once: true })
      if (o.signal?.aborted) throw JOB_CANCELLED()
      // Zeros first, holes dug at once: nothing touches those blocks after, so each data block
      // is final once written (onWritten) and may be checked from then on.
      await this.#zeroOverParent()
      await this.#digHoles()
      this.#startRemote()
      await Promise.all([this.#copyLocal(), remote])
      if (this.#failure) throw this.#failure
      // Every block is in place: the last checks may run while the target syncs.
      o.onAllWritten?.()
      await this.#flush()
    } catch (err) {
      this.#stopRemote()
      await this.#flush().catch(() => {})
      throw err
    } finally {
      clearInterval(flusher)
      clearTimeout(this.#waitTimer)
      clearTimeout(this.#limitTimer)
      o.signal?.removeEventListener('abort', onAbort)
      this.#o.pool.off('holder', this.#onHolder)
      this.#o.pool.off('peer-closed', this.#onClosed)
      this.#o.pool.off('withdrawn', this.#onWithdrawn)
      await this.#flushing
      await this.#fh.close()
    }
  }

  // ---- zero blocks over parent data, and local copies ----

  async #zeroOverParent (): Promise<void> {
    const bs = this.#m.blockSize
    const zero = Buffer.alloc(bs * 64)
    const list = this.#o.plan.zeroOverParent
    for (let k = 0; k < list.length;) {
      let n = 1
      while (k + n < list.length && n < 64 && list[k + n] === list[k]! + n) n++
      const start = list[k]!
      const len = Math.min(n * bs, this.#m.size - start * bs)
      await this.#writeAll(zero.subarray(0, len), start * bs)
      for (let j = 0; j < n; j++) this.#mark(start + j)
      k += n
    }
  }

  // Zeros already read as zeros; punching gives long runs' space back. (Not `fallocate
  // --dig-holes` with a range: util-linux 2.38 punched the block after the range here.)
  async #digHoles (): Promise<void> {
    const list = this.#o.plan.zeroOverParent
    const bs = this.#m.blockSize
    let calls = 0
    for (let k = 0; k < list.length && calls < MAX_PUNCH_CALLS;) {
      let n = 1
      while (k + n < list.length && list[k + n] === list[k]! + n) n++
      if (n >= MIN_PUNCH_BLOCKS) {
        const offset = list[k]! * bs
        const length = Math.min(n * bs, this.#m.size - offset)
        await execa('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), this.#o.path], { reject: false })
        calls++
      }
      k += n
    }
  }

  // Runs contiguous in both the source and the target are cloned (shared extents, no bytes
  // moved) where the filesystem can; what it refuses is read and written.
  async #copyLocal (): Promise<void> {
    const list = [...this.#o.plan.local].sort((a, b) => a.from.path < b.from.path ? -1 : a.from.path > b.from.path ? 1 : a.from.index - b.from.index)
    if (!list.length) return
    const bs = this.#m.blockSize
    const runs: Array<{ k: number, n: number }> = []
    for (let k = 0; k < list.length;) {
      let n = 1
      while (k + n < list.length && list[k + n]!.from.path === list[k]!.from.path && list[k + n]!.from.index === list[k]!.from.index + n && list[k + n]!.index === list[k]!.index + n) n++
      runs.push({ k, n })
      k += n
    }
    const copy: typeof list = []
    let cloning = true
    for (let r = 0; r < runs.length; r += CLONE_BATCH_RUNS) {
      if (this.#failure || this.#o.signal?.aborted) return
      const part = runs.slice(r, r + CLONE_BATCH_RUNS)
      // A short last block cannot be cloned (ranges are whole filesystem blocks).
      const ranges = part.filter(({ k, n }) => cloning && blockLength(this.#m, list[k + n - 1]!.index) === bs && list[k + n - 1]!.from.length === bs)
        .map(({ k, n }) => ({ src: list[k]!.from.path, srcOffset: list[k]!.from.index * bs, dstOffset: list[k]!.index * bs, length: n * bs }))
      const cloned = ranges.length ? await cloneRanges(this.#o.path, ranges, this.#o.signal) : new Set<number>()
      if (!cloned.size) cloning = false
      const done: number[] = []
      for (const { k, n } of part) {
        const wasCloned = cloned.has(list[k]!.index * bs)
        for (let j = k; j < k + n; j++) {
          if (wasCloned) done.push(list[j]!.index)
          else copy.push(list[j]!)
        }
      }
      if (done.length) this.#localDone(done, true)
    }
    await this.#copyBytes(copy)
  }

  #localDone (indices: number[], cloned: boolean): void {
    for (const i of indices) this.#mark(i)
    this.#o.local.addBlocks(this.#o.volume, indices)
    this.#o.onWritten?.(indices)
    this.#o.stats.copiedLocal += indices.length
    if (cloned) this.#o.stats.clonedLocal = (this.#o.stats.clonedLocal ?? 0) + indices.length
    this.#completed += indices.length
    this.#o.onProgress?.(this.#completed, this.#total)
  }

  async #copyBytes (list: FetchPlan['local']): Promise<void> {
    const handles = new Map<string, fs.FileHandle>()
    const bs = this.#m.blockSize
    try {
      for (let k = 0; k < list.length; k += LOCAL_BATCH_BLOCKS) {
        if (this.#failure || this.#o.signal?.aborted) return
        const part = list.slice(k, k + LOCAL_BATCH_BLOCKS)
        const buf = Buffer.allocUnsafe(part.length * bs)
        // Reads: one per run contiguous in the source.
        const reads: Array<Promise<void>> = []
        for (let j = 0; j < part.length;) {
          let n = 1
          while (j + n < part.length && part[j + n]!.from.path === part[j]!.from.path && part[j + n]!.from.index === part[j]!.from.index + n) n++
          const first = part[j]!.from
          const len = (n - 1) * bs + part[j + n - 1]!.from.length
          const at = j * bs
          reads.push((async () => {
            let fh = handles.get(first.path)
            if (!fh) { fh = await fs.open(first.path, 'r'); handles.set(first.path, fh) }
            let got = 0
            while (got < len) {
              const { bytesRead } = await fh.read(buf, at + got, len - got, first.index * bs + got)
              if (!bytesRead) throw new Error(`short read from ${first.path}`)
              got += bytesRead
            }
          })())
          j += n
        }
        await Promise.all(reads)
        const writes: Array<[number, Buffer]> = part.map((c, j) => [c.index * bs, buf.subarray(j * bs, j * bs + blockLength(this.#m, c.index))])
        await this.#writeRuns(writes)
        this.#localDone(part.map(c => c.index), false)
      }
    } finally {
      for (const fh of handles.values()) await fh.close().catch(() => {})
    }
  }

  // ---- remote ----

  #onHolder = (rootHex: string, session: PeerSession, start?: number, count?: number) => {
    if (rootHex !== this.#rootHex) return
    const known = this.#peers.get(session.remoteHex)
    if (known) {
      known.heardAt = performance.now()
      if (this.#o.background && start !== undefined && count !== undefined) this.#hint(known, start, start + count)
      if (known.session === session) this.#refreshHolding(known)
    }
    // A part-way peer that now holds it all: what it blocked may be asked of whole holders.
    if (session.adverts.has(rootHex)) this.#blocked.clear()
    this.#addPeer(session)
    this.#pumpAll()
  }

  // A holder that withdrew the image holds what its last Have said, if anything.
  #onWithdrawn = (rootHex: string, session: PeerSession) => {
    const known = this.#peers.get(session.remoteHex)
    if (rootHex === this.#rootHex && known?.session === session) this.#refreshHolding(known)
  }

  #onClosed = (session: PeerSession) => {
    const ps = this.#peers.get(session.remoteHex)
    if (ps && ps.session === session) this.#removePeer(ps)
  }

  #startRemote (): void {
    this.#remoteStart = performance.now()
    if (this.#entries.length === 0) { this.#finish(); return }
    this.#o.pool.on('holder', this.#onHolder)
    this.#o.pool.on('peer-closed', this.#onClosed)
    this.#o.pool.on('withdrawn', this.#onWithdrawn)
    for (const s of this.#o.pool.holders(this.#rootHex)) this.#addPeer(s)
    this.#pumpAll()
  }

  #stopRemote (): void {
    for (const ps of this.#peers.values()) for (const r of ps.inflight) ps.session.cancel(r.id)
  }

  #addPeer (session: PeerSession): void {
    const hex = session.remoteHex
    if (this.#banned.has(hex) || session.closed) return
    if (this.#o.from && !this.#o.from.has(hex)) return
    const old = this.#peers.get(hex)
    if (old?.session === session) return
    if (old) this.#removePeer(old)
    this.#peers.set(hex, { hex, session, inflight: new Set(), missing: new Set(), rate: 0, lastAt: 0, failures: 0, hints: [0, blockCount(this.#m.size, this.#m.blockSize)], heardAt: performance.now(), whole: false, bits: undefined })
    this.#swarmView = undefined
    this.#refreshHolding(this.#peers.get(hex)!)
    this.#o.stats.peers[hex] ??= { host: session.remoteHello?.host ?? '', blocks: 0, rawBytes: 0, wireBytes: 0 }
  }

  #refreshHolding (ps: PeerState): void {
    const whole = ps.session.adverts.has(this.#rootHex)
    if (whole !== ps.whole) this.#swarmView = undefined
    // What it answered missing while part-way, it holds now (else those blocks, asked of it
    // alone, waited for PEER_WAIT_MS and failed the fetch).
    if (whole && !ps.whole) ps.missing.clear()
    ps.whole = whole
    ps.bits = ps.session.haves.get(this.#rootHex)
  }

  #removePeer (ps: PeerState): void {
    if (this.#peers.get(ps.hex) !== ps) return
    this.#peers.delete(ps.hex)
    this.#swarmView = undefined
    this.#blocked.clear()
    for (const r of [...ps.inflight]) {
      ps.session.cancel(r.id)
      this.#release(r.us)
    }
    ps.inflight.clear()
    this.#pumpAll()
  }

  #drop (ps: PeerState, err: OsfarmError): void {
    this.#banned.add(ps.hex)
    this.#o.stats.droppedPeers.push(ps.hex)
    this.#removePeer(ps)
    ps.session.destroy(err)
  }

  // Blocks a peer may have asked for and not yet answered. Counted in blocks, not requests:
  // requests shrink near the end, and a window of small requests let the links idle between
  // answers for the last fifth of a 3-peer fetch.
  #window (ps: PeerState): number {
    // Background, at a whole holder, while other hosts fetch it too: a short queue, so what this
    // host has asked the source for but not yet received (which the others cannot see) stays
    // small. Alone, the full window (with 2 a lone roll-out took 1.3× a user's fetch).
    const min = this.#o.background && ps.whole && this.#view().fetching.length > 1 ? MIN_WINDOW_SWARM : MIN_WINDOW
    return Math.max(min * this.#batch, Math.min(MAX_WINDOW * this.#batch, Math.ceil(ps.rate * QUEUE_SECONDS / this.#m.blockSize)))
  }


  #pumpAll (): void {
    if (this.#failure) return
    for (const ps of [...this.#peers.values()].sort((a, b) => b.rate - a.rate)) this.#assign(ps)
    this.#checkStall()
  }

  #assign (ps: PeerState): void {
    // Blocks asked of it and not yet answered: counted once, then kept up as requests go out
    // (answers arrive only after this returns).
    let asked = 0
    for (const r of ps.inflight) asked += r.us.length
    const window = this.#window(ps)
    while (asked < window && ps.inflight.size < MAX_REQUESTS && !this.#failure && !ps.session.closed && this.#done < this.#entries.length) {
      let dup = false
      let us = this.#takePending(ps)
      // Endgame: one copy request at a time per peer, so the tail costs little on the wire.
      if (!us.length && this.#pending === 0 && ![...ps.inflight].some(r => r.dup)) { us = this.#takeEndgame(ps); dup = true }
      if (!us.length) return
      if (this.#o.limiter && !dup) {
        const wait = this.#o.limiter.reserve(us.length * this.#m.blockSize)
        if (wait > 0) {
          this.#limitTimer ??= setTimeout(() => { this.#limitTimer = undefined; this.#pumpAll() }, wait)
          return
        }
      }
      this.#send(ps, us, dup)
      asked += us.length
    }
  }

  #peerHas (ps: PeerState, u: number): boolean {
    if (ps.missing.has(u)) return false
    if (ps.whole) return true
    const bits = ps.bits
    if (!bits) return false
    for (const i of this.#entries[u]!.indices) if (i >> 3 < bits.length && (bits[i >> 3]! & (1 << (i & 7))) !== 0) return true
    return false
  }

  // Background: the part-way peers, and the hosts fetching this image (itself and them, by key)
  // with its rank among them; kept until the peers or their holdings change.
  #view (): { partial: PeerState[], fetching: string[], rank: number } {
    if (this.#swarmView) return this.#swarmView
    const partial = [...this.#peers.values()].filter(p => !p.whole && !p.session.closed)
    const fetching = [...new Set([this.#o.self ?? '', ...partial.map(p => p.hex)])].sort()
    this.#swarmView = { partial, fetching, rank: fetching.indexOf(this.#o.self ?? '') }
    return this.#swarmView
  }

  #takePending (ps: PeerState): number[] {
    const us: number[] = []
    const n = this.#entries.length
    while (this.#cursor < n && this.#state[this.#cursor] !== 0) this.#cursor++
    if (this.#o.background) return this.#takeSwarming(ps)
    const batch = this.#tailBatch()
    for (let u = this.#cursor, scanned = 0; u < n && us.length < batch && scanned < SCAN_LIMIT; u++, scanned++) {
      if (this.#state[u] === 0 && this.#peerHas(ps, u)) us.push(u)
    }
    return us
  }

  #takeSwarming (ps: PeerState): number[] {
    const us: number[] = []
    if (ps.whole) {
      // A whole holder: only blocks no part-way peer of ours can give. The image's blocks are
      // cut into chunks of a request's size, in one order every host derives from the root;
      // chunk c is this host's when c mod N is its rank among the N hosts fetching (itself and
      // the part-way peers, by key). It asks for its own chunks front to back, and for others'
      // (from the back, where their owners come last) only once its own requests here have
      // nearly drained, and only chunks of an owner that has announced nothing for OWNER_STALL_MS:
      // asked for sooner, they would be asked for by their owners too, and every such copy
      // costs the source's upload, which the whole roll-out waits on.
      const { partial, fetching, rank } = this.#view()
      const { order, start } = this.#chunking()
      const take = (c: number) => {
        if (this.#blocked.has(c)) return
        let open = false
        for (let u = start[c]!; u < start[c + 1]! && us.length < this.#batch; u++) {
          if (this.#state[u] !== 0 || partial.some(p => this.#peerHas(p, u))) continue
          open = true
          if (!ps.missing.has(u)) us.push(u)
        }
        // Nothing in it a whole holder may be asked for, until a request is given back or
        // the peers change.
        if (!open) this.#blocked.add(c)
      }
      while (this.#front < this.#back && this.#chunkDone(order[this.#front]!)) this.#front++
      while (this.#back > this.#front && this.#chunkDone(order[this.#back - 1]!)) this.#back--
      for (let k = this.#front; k < this.#back && us.length < this.#batch; k++) {
        if (order[k]! % fetching.length === rank) take(order[k]!)
      }
      if (us.length || ps.inflight.size > 1) return us
      const now = performance.now()
      const stalled = fetching.map(hex => hex !== this.#o.self && now - (this.#peers.get(hex)?.heardAt ?? 0) > OWNER_STALL_MS)
      for (let k = this.#back - 1; k >= this.#front && !us.length; k--) if (stalled[order[k]! % fetching.length]) take(order[k]!)
      return us
    }
    // A part-way peer: the blocks its hints cover that are pending and that it has.
    const entryOf = this.#entryOf()
    const h = ps.hints
    while (h.length && us.length < this.#batch) {
      let i = h[0]!
      const to = Math.min(h[1]!, entryOf.length)
      for (; i < to && us.length < this.#batch; i++) {
        const u = entryOf[i]!
        if (u >= 0 && this.#state[u] === 0 && this.#peerHas(ps, u) && !us.includes(u)) us.push(u)
      }
      if (i >= to) h.splice(0, 2)
      else h[0] = i
    }
    return us
  }

  // Adds [from, to) to a part-way peer's hints; many small ranges fold into one.
  #hint (ps: PeerState, from: number, to: number): void {
    const h = ps.hints
    if (h.length < 2 * MAX_HINTS) { h.push(from, to); return }
    let lo = from
    let hi = to
    for (let k = 0; k < h.length; k += 2) { lo = Math.min(lo, h[k]!); hi = Math.max(hi, h[k + 1]!) }
    h.length = 0
    h.push(lo, hi)
  }

  // Block index → its entry in the plan's remote list (-1: not fetched from peers).
  #entryOf (): Int32Array {
    if (this.#entryIndex) return this.#entryIndex
    const map = new Int32Array(blockCount(this.#m.size, this.#m.blockSize)).fill(-1)
    this.#entries.forEach((e, u) => { for (const i of e.indices) map[i] = u })
    this.#entryIndex = map
    return map
  }

  // Chunks of `#batch` block indices (the same on every host), their order (from the root),
  // and where each chunk's entries start (entries are in first-index order).
  #chunking (): { order: Uint32Array, start: Uint32Array } {
    if (this.#chunks) return this.#chunks
    const count = Math.ceil(blockCount(this.#m.size, this.#m.blockSize) / this.#batch)
    const start = new Uint32Array(count + 1)
    let u = 0
    for (let c = 0; c < count; c++) {
      start[c] = u
      while (u < this.#entries.length && this.#entries[u]!.indices[0]! < (c + 1) * this.#batch) u++
    }
    start[count] = this.#entries.length
    this.#chunks = { order: shuffle(count, this.#m.root), start }
    this.#back = count
    return this.#chunks
  }

  // Every entry of chunk c is asked for or done.
  #chunkDone (c: number): boolean {
    const { start } = this.#chunks!
    for (let u = start[c]!; u < start[c + 1]!; u++) if (this.#state[u] === 0) return false
    return true
  }

  // Request size: whole batches, but smaller once what is pending would not fill every peer's
  // minimum window, so that several peers finish together and the endgame has little to copy.
  #tailBatch (): number {
    const peers = this.#peers.size
    if (peers < 2) return this.#batch
    return Math.max(Math.min(this.#batch, TAIL_MIN_BLOCKS), Math.min(this.#batch, Math.ceil(this.#pending / (peers * MIN_WINDOW))))
  }

  // Blocks in flight at other peers, slowest peers' oldest requests first.
  #takeEndgame (ps: PeerState): number[] {
    const us: number[] = []
    const others = [...this.#peers.values()].filter(p => p !== ps).sort((a, b) => a.rate - b.rate)
    // Background: only requests that seem stuck, and a whole holder (the source, whose upload
    // everyone shares) only for ones stuck much longer.
    const minAge = !this.#o.background ? 0 : ps.whole ? ENDGAME_WHOLE_AGE_MS : ENDGAME_AGE_MS
    const now = performance.now()
    const bs = this.#m.blockSize
    for (const other of others) {
      let reqs = [...other.inflight]
      if (!this.#o.background && other.rate > 0 && ps.rate > 0) {
        // Foreground: a request is raced only where this peer would bring it sooner than it
        // comes from its own (after what is queued there before it), latest first. The head of
        // a queue is about to arrive: copying it (oldest first, as before) put 6.5 MB of
        // duplicates on the wire in a 3-peer fetch of 74 MB.
        // One that is overdue (twice its expected time) is raced whatever the rates say.
        let ahead = 0
        reqs = reqs.filter(r => {
          ahead += r.us.length * bs
          const due = ahead / other.rate
          return r.us.length * bs / ps.rate * ENDGAME_MARGIN < due || (now - r.sentAt) / 1000 > 2 * due
        }).reverse()
      }
      for (const r of reqs) {
        if (now - r.sentAt < minAge) continue
        for (const u of r.us) {
          if (this.#state[u] === 1 && this.#copies[u]! <= MAX_DUPLICATES && this.#peerHas(ps, u) && !us.includes(u)) us.push(u)
          if (us.length >= this.#tailBatch()) return us
        }
      }
    }
    return us
  }

  #send (ps: PeerState, us: number[], dup: boolean): void {
    const hashes = Buffer.allocUnsafe(us.length * HASH_BYTES)
    for (let j = 0; j < us.length; j++) {
      const u = us[j]!
      if (this.#state[u] === 0) { this.#state[u] = 1; this.#pending-- }
      this.#copies[u]!++
      const at = this.#entries[u]!.indices[0]! * HASH_BYTES
      this.#m.hashes.copy(hashes, j * HASH_BYTES, at, at + HASH_BYTES)
    }
    const req: Req = { peer: ps, us, sentAt: performance.now(), id: 0, dup }
    ps.inflight.add(req)
    const bs = this.#m.blockSize
    const into = { path: this.#o.path, at: us.map(u => this.#entries[u]!.indices.map(i => i * bs)) }
    ps.session.getBlocks(hashes, id => { req.id = id }, this.#o.background ? this.#m.root : undefined, into).then(
      batch => this.#onBatch(ps, req, batch),
      err => this.#onFail(ps, req, err)
    ).catch(err => this.#abort(err))
  }

  // Gives entries back to pending where no other copy is in flight.
  #release (us: Iterable<number>): void {
    for (const u of us) {
      this.#copies[u]!--
      if (this.#state[u] === 1 && this.#copies[u] === 0) {
        this.#state[u] = 0
        this.#pending++
        if (u < this.#cursor) this.#cursor = u
        // Its chunk may lie behind the swarming pointers: scan from the ends again.
        if (this.#chunks) { this.#front = 0; this.#back = this.#chunks.order.length; this.#blocked.clear() }
        // Given back: a hint again for the part-way peers that hold it.
        if (this.#o.background) for (const p of this.#peers.values()) if (!p.whole && this.#peerHas(p, u)) this.#hint(p, this.#entries[u]!.indices[0]!, this.#entries[u]!.indices[0]! + 1)
      }
    }
  }

  #onBatch (ps: PeerState, req: Req, batch: BlockBatch): void {
    if (!ps.inflight.delete(req)) return
    const now = performance.now()
    const written: number[] = []
    let raw = 0
    let got = 0
    for (let j = 0; j < req.us.length; j++) {
      const u = req.us[j]!
      const size = batch.sizes[j]!
      if (size === 0) {
        ps.missing.add(u)
        this.#release([u])
        continue
      }
      raw += size
      this.#copies[u]!--
      if (this.#state[u] === 2) continue
      const e = this.#entries[u]!
      // Checked, and written where valid, by the worker that unpacked the answer.
      if (size !== blockLength(this.#m, e.indices[0]!) || batch.valid?.[j] !== 1) {
        this.#o.stats.badBlocks++
        this.#copies[u]!++
        this.#release(req.us.slice(j))
        this.#drop(ps, BAD_BLOCK(`block ${e.indices[0]} from peer ${ps.hex.slice(0, 16)} does not match its hash`))
        return
      }
      this.#state[u] = 2
      this.#done++
      got++
      written.push(...e.indices)
    }
    // Rate: raw bytes over the time since this peer's previous answer (or this request's start).
    const dt = Math.max(1, now - Math.max(req.sentAt, ps.lastAt))
    ps.lastAt = now
    ps.rate = ps.rate === 0 ? raw * 1000 / dt : ps.rate * 0.8 + (raw * 1000 / dt) * 0.2
    const s = this.#o.stats
    const p = s.peers[ps.hex]!
    p.blocks += got
    p.rawBytes += raw
    p.wireBytes += batch.wireBytes ?? 0
    s.received += got
    s.rawBytes += raw
    s.wireBytes += batch.wireBytes ?? 0
    s.rate = s.rawBytes * 1000 / Math.max(1, now - this.#remoteStart)
    s.remoteMs = Math.round(now - this.#remoteStart)
    // Duplicates of what just arrived are no longer needed.
    if (this.#pending === 0) this.#cancelDone()
    if (written.length) this.#inPlace(written)
    if (this.#done === this.#entries.length) { this.#finish(); return }
    this.#assign(ps)
    this.#pumpAll()
  }

  #cancelDone (): void {
    for (const ps of this.#peers.values()) {
      for (const r of [...ps.inflight]) {
        if (r.us.every(u => this.#state[u] === 2)) {
          ps.inflight.delete(r)
          for (const u of r.us) this.#copies[u]!--
          ps.session.cancel(r.id)
        }
      }
    }
  }

  #onFail (ps: PeerState, req: Req, err: Error): void {
    if (!ps.inflight.delete(req)) return
    this.#release(req.us)
    // The target could not be written: no peer can help with that.
    if ((err as OsfarmError).code === 'IO_ERROR') { this.#abort(err); return }
    if (ps.session.closed) {
      this.#removePeer(ps)
    } else if (++ps.failures > MAX_PEER_FAILURES) {
      this.#removePeer(ps)
      this.#banned.add(ps.hex)
    } else if ((err as OsfarmError).code === 'PEER_GONE') {
      for (const u of req.us) ps.missing.add(u)
    }
    this.#pumpAll()
  }

  // Blocks now written at `indices`: progress, the locator, the whole-image check.
  #inPlace (indices: number[]): void {
    for (const i of indices) this.#mark(i)
    this.#o.local.addBlocks(this.#o.volume, indices)
    this.#o.onWritten?.(indices)
    this.#completed += indices.length
    this.#o.onProgress?.(this.#completed, this.#total)
    this.#writtenSinceFlush += indices.length * this.#m.blockSize
    if (this.#writtenSinceFlush >= FLUSH_BYTES) {
      this.#writtenSinceFlush = 0
      this.#flush().catch(err => this.#abort(err))
    }
  }

  #abort (err: unknown): void {
    if (this.#failure) return
    this.#failure = err instanceof Error ? err : new Error(String(err))
    this.#stopRemote()
    this.#fail(this.#failure)
  }

  #checkStall (): void {
    const busy = [...this.#peers.values()].some(p => p.inflight.size > 0)
    if (busy || this.#done === this.#entries.length || this.#failure) {
      clearTimeout(this.#waitTimer)
      this.#waitTimer = undefined
      return
    }
    this.#waitTimer ??= setTimeout(() => {
      this.#waitTimer = undefined
      const busyNow = [...this.#peers.values()].some(p => p.inflight.size > 0)
      if (!busyNow && this.#done < this.#entries.length) {
        this.#abort(NO_PEERS(`no reachable peer holds the ${this.#entries.length - this.#done} missing blocks of ${this.#rootHex.slice(0, 16)}`))
      }
    }, this.#o.peerWaitMs ?? PEER_WAIT_MS)
  }

  // ---- writes and progress ----

  #mark (i: number): void {
    this.#o.progress.set(i)
    this.#dirty = true
  }

  // One flush at a time; a call during a flush waits for it and then flushes again if needed.
  #flush (): Promise<void> {
    const run = async () => {
      if (!this.#dirty) return
      this.#dirty = false
      this.#writtenSinceFlush = 0
      const snapshot = Buffer.from(this.#o.progress.bits)
      await this.#fh.datasync()
      await this.#o.progress.save(snapshot)
      this.#o.onFlush?.(snapshot)
    }
    const next = this.#flushing.then(run, run)
    this.#flushing = next.catch(() => {})
    return next
  }

  async #writeRuns (writes: Array<[number, Buffer]>): Promise<void> {
    writes.sort((a, b) => a[0] - b[0])
    const runs: Array<Promise<void>> = []
    for (let k = 0; k < writes.length;) {
      const pos = writes[k]![0]
      const bufs = [writes[k]![1]]
      let end = pos + writes[k]![1].length
      let n = 1
      while (k + n < writes.length && writes[k + n]![0] === end && bufs.length < 1024) {
        bufs.push(writes[k + n]![1])
        end += writes[k + n]![1].length
        n++
      }
      runs.push(this.#writev(bufs, pos, end - pos))
      k += n
    }
    await Promise.all(runs)
  }

  async #writev (bufs: Buffer[], pos: number, len: number): Promise<void> {
    const { bytesWritten } = await this.#fh.writev(bufs, pos)
    if (bytesWritten === len) return
    // Short write (rare): finish it plainly.
    await this.#writeAll(Buffer.concat(bufs).subarray(bytesWritten), pos + bytesWritten)
  }

  async #writeAll (buf: Buffer, pos: number): Promise<void> {
    let off = 0
    while (off < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, off, buf.length - off, pos + off)
      off += bytesWritten
    }
  }
}

// 0..n-1 shuffled by a generator seeded from `seed`: every host gets the same order.
function shuffle (n: number, seed: Buffer): Uint32Array {
  const a = new Uint32Array(n)
  for (let i = 0; i < n; i++) a[i] = i
  let x = seed.readUInt32LE(0) || 1
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    const j = x % (i + 1)
    const t = a[i]!
    a[i] = a[j]!
    a[j] = t
  }
  return a
}

export function emptyStats (m: Manifest): FetchStats {
  return {
    blocks: blockCount(m.size, m.blockSize),
    zeroBlocks: 0,
    inPlace: 0,
    copiedLocal: 0,
    received: 0,
    resumed: 0,
    rawBytes: 0,
    wireBytes: 0,
    manifestBytes: 0,
    badBlocks: 0,
    droppedPeers: [],
    peers: {},
    elapsedMs: 0,
    rate: 0,
    phases: {},
    remoteMs: 0
  }
}
