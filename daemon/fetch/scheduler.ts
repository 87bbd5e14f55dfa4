// The fetch scheduler: which blocks to ask which peer for, and when. Pure decision logic over
// what each peer holds and has in flight, with an injectable clock; it sends nothing itself
// (remote-fetch.ts does). The request flow is in docs/fetch-flow.md.

import { blockCount } from '../blocks/manifest.js'

// Requests in flight per peer: about QUEUE_SECONDS of data, MIN_WINDOW..MAX_WINDOW requests' worth.
const MIN_WINDOW = 8
const MIN_WINDOW_SWARM = 2
const MAX_WINDOW = 64
// Requests in flight to one peer at most, however small they are.
const MAX_REQUESTS = 256
const QUEUE_SECONDS = 0.25
// Pending entries scanned per assignment, so a partial peer with few blocks costs little.
const SCAN_LIMIT = 16_384
const MAX_DUPLICATES = 1
// Smallest request near the end of a fetch from several peers.
const TAIL_MIN_BLOCKS = 32
// Background fetches duplicate a request in the endgame only once it is this old.
const ENDGAME_AGE_MS = 1500
const ENDGAME_WHOLE_AGE_MS = 5000
// Background: the endgame's scan of other peers' requests runs at most this often.
const ENDGAME_SCAN_MS = 100
// Background: blocks a whole holder withheld (it sent them to another host first, see
// spread-guard.ts) are asked of it again after this long.
const WITHHELD_RETRY_MS = 2000
const MAX_PEER_FAILURES = 3
// Foreground endgame: a request is raced when this peer would bring it this much sooner.
const ENDGAME_MARGIN = 1.25

// One request: entries (indices into the plan's remote list) asked of one peer.
export interface Req {
  peer: PeerState
  us: number[]
  sentAt: number
  id: number
  dup: boolean
}

// What the scheduler knows of one peer.
export interface PeerState {
  hex: string
  inflight: Set<Req>
  missing: Set<number>
  rate: number
  lastAt: number
  failures: number
  // Background, a part-way peer: chunks it announced blocks of (or whose blocks were given
  // back) that have not been looked at since, in order; `hinted` flags them.
  hints: number[]
  hinted: Uint8Array | undefined
  // Background, a part-way peer: 1 for each chunk it holds whole (see #chunking).
  chunks: Uint8Array | undefined
  // When it last answered a block missing.
  missingAt: number
  // What it holds of this image, as of its last advert or Have.
  whole: boolean
  bits: Buffer | undefined
  // Its connection is closed: it gets no more requests.
  closed: boolean
}

export interface SchedulerOptions {
  // The plan's remote entries: one per distinct hash, every block index that holds it, in
  // first-index order.
  entries: ReadonlyArray<{ indices: number[] }>
  size: number
  blockSize: number
  // Blocks per full request.
  batch: number
  // Seeds the swarming order (every host derives the same from the root).
  root: Buffer
  // Background work (seeding): swarming rules, see docs/fetch-flow.md.
  background?: boolean
  // This host's key (background: its rank among the hosts fetching the image).
  self?: string
  now?: () => number
}

// How one answer went: the entries now done, the raw bytes it carried, and the first entry
// whose block was bad (the peer is then to be dropped; the rest of the request went back).
export interface AnswerOutcome {
  got: number[]
  raw: number
  bad?: number
}

export class Scheduler {
  readonly #o: SchedulerOptions
  readonly #entries: SchedulerOptions['entries']
  readonly #now: () => number
  // Per entry: 0 pending, 1 asked for, 2 done; and copies in flight.
  readonly #state: Uint8Array
  readonly #copies: Uint8Array
  readonly #peers = new Map<string, PeerState>()
  readonly #banned = new Set<string>()
  readonly #batch: number
  #cursor = 0
  #pending: number
  #done = 0
  // Background: request-sized chunks of the image (by block index), in this host's own order.
  #chunks: { order: Uint32Array, start: Uint32Array, of: Uint32Array } | undefined
  // Background: per chunk, how many connected part-way peers hold it whole, and how many of its
  // entries are pending.
  #avail: Uint16Array | undefined
  #open: Uint16Array | undefined
  // Background: chunks with entries pending that no connected part-way peer holds; and what a
  // scan of them that found nothing to ask saw (the same again finds nothing again).
  #rare = 0
  #rareMiss: { ps: PeerState, rare: number, missing: number, front: number } | undefined
  // Background: chunks before this point of the order are all asked for or done.
  #front = 0
  #partial = 0
  #endgameAt = -Infinity

  constructor (options: SchedulerOptions) {
    this.#o = options
    this.#entries = options.entries
    this.#now = options.now ?? (() => performance.now())
    this.#state = new Uint8Array(this.#entries.length)
    this.#copies = new Uint8Array(this.#entries.length)
    this.#pending = this.#entries.length
    this.#batch = options.batch
  }

  get pending (): number { return this.#pending }
  get done (): number { return this.#done }
  get finished (): boolean { return this.#done === this.#entries.length }
  get remaining (): number { return this.#entries.length - this.#done }
  // Some peer has a request out.
  get busy (): boolean { return [...this.#peers.values()].some(p => p.inflight.size > 0) }

  peer (hex: string): PeerState | undefined { return this.#peers.get(hex) }
  peers (): PeerState[] { return [...this.#peers.values()] }
  isBanned (hex: string): boolean { return this.#banned.has(hex) }
  ban (hex: string): void { this.#banned.add(hex) }
  // Peers fastest first: the order work is handed out in.
  byRate (): PeerState[] { return [...this.#peers.values()].sort((a, b) => b.rate - a.rate) }

  // A new peer (one by the same key must have been removed first).
  addPeer (hex: string, holding: { whole: boolean, bits: Buffer | undefined }): PeerState {
    const ps: PeerState = { hex, inflight: new Set(), missing: new Set(), rate: 0, lastAt: 0, failures: 0, hints: [], hinted: undefined, chunks: undefined, missingAt: 0, whole: false, bits: undefined, closed: false }
    this.#peers.set(hex, ps)
    this.setHolding(ps, holding.whole, holding.bits)
    return ps
  }

  // What the peer holds now (its advert, its latest Have bitfield).
  setHolding (ps: PeerState, whole: boolean, bits: Buffer | undefined): void {
    // What it answered missing while part-way, it holds now (else those blocks, asked of it
    // alone, waited for the peer wait and failed the fetch).
    if (whole && !ps.whole) ps.missing.clear()
    this.#forget(ps)
    ps.whole = whole
    ps.bits = bits
    if (this.#o.background && !whole) {
      this.#partial++
      ps.chunks = new Uint8Array(this.#chunking().order.length)
      ps.hinted = new Uint8Array(ps.chunks.length)
      ps.hints = []
      // What it holds so far: from its first block to its last (a new fetcher: nothing).
      let first = -1
      let last = -1
      const held = bits ?? Buffer.alloc(0)
      for (let k = 0; k < held.length; k++) if (held[k]) { if (first < 0) first = k; last = k }
      if (first >= 0) this.#count(ps, first * 8, (last + 1) * 8)
    }
  }

  // The peer announced blocks [start, start + count) (a Have).
  heard (ps: PeerState, start?: number, count?: number): void {
    if (!this.#o.background || start === undefined || count === undefined || !this.#peers.has(ps.hex) || ps.whole) return
    this.#count(ps, start, start + count)
  }

  // Takes the peer out; its requests go back to pending. Returns them (to cancel on the wire).
  removePeer (ps: PeerState): Req[] {
    if (this.#peers.get(ps.hex) !== ps) return []
    this.#peers.delete(ps.hex)
    this.#forget(ps)
    const reqs = [...ps.inflight]
    for (const r of reqs) this.#release(r.us)
    ps.inflight.clear()
    return reqs
  }

  // Requests to send to `ps` now, each already counted as in flight. `admit` may refuse a
  // fresh (not duplicate) request, for a rate limit: assignment stops there.
  assign (ps: PeerState, admit?: (blocks: number) => boolean): Req[] {
    const out: Req[] = []
    // Blocks asked of it and not yet answered: counted once, then kept up as requests go out.
    let asked = 0
    for (const r of ps.inflight) asked += r.us.length
    const window = this.#window(ps)
    while (asked < window && ps.inflight.size < MAX_REQUESTS && !ps.closed && this.#done < this.#entries.length) {
      let dup = false
      let us = this.#takePending(ps)
      // Endgame: one copy request at a time per peer, so the tail costs little on the wire.
      if (!us.length && this.#pending === 0 && ![...ps.inflight].some(r => r.dup)) { us = this.#takeEndgame(ps); dup = true }
      if (!us.length) break
      if (admit && !dup && !admit(us.length)) break
      out.push(this.#mark(ps, us, dup))
      asked += us.length
    }
    return out
  }

  // An answer to `req`: sizes[j] is the raw length of entry req.us[j]'s block (0: the peer
  // lacks it), valid(j) whether it matched its hash, expected(u) the length it must have.
  // Undefined when the request was no longer in flight (cancelled, or its peer removed).
  answer (req: Req, sizes: number[], valid: (j: number) => boolean, expected: (u: number) => number): AnswerOutcome | undefined {
    const ps = req.peer
    if (!ps.inflight.delete(req)) return undefined
    const now = this.#now()
    const got: number[] = []
    let raw = 0
    for (let j = 0; j < req.us.length; j++) {
      const u = req.us[j]!
      const size = sizes[j]!
      if (size === 0) {
        ps.missing.add(u)
        ps.missingAt = now
        this.#release([u])
        continue
      }
      raw += size
      this.#copies[u]!--
      if (this.#state[u] === 2) continue
      if (size !== expected(u) || !valid(j)) {
        this.#copies[u]!++
        this.#release(req.us.slice(j))
        return { got, raw, bad: u }
      }
      this.#state[u] = 2
      this.#done++
      got.push(u)
    }
    // Rate: raw bytes over the time since this peer's previous answer (or this request's start).
    const dt = Math.max(1, now - Math.max(req.sentAt, ps.lastAt))
    ps.lastAt = now
    ps.rate = ps.rate === 0 ? raw * 1000 / dt : ps.rate * 0.8 + (raw * 1000 / dt) * 0.2
    return { got, raw }
  }

  // A request failed (timeout, the peer left, ...). Returns what to do with the peer: 'remove'
  // it, 'ban' it (remove, and not again in this fetch) or 'keep' it.
  failed (req: Req, why: { closed: boolean, code?: string }): 'remove' | 'ban' | 'keep' | undefined {
    const ps = req.peer
    if (!ps.inflight.delete(req)) return undefined
    this.#release(req.us)
    if (why.code === 'IO_ERROR') return 'keep'
    if (why.closed) return 'remove'
    if (++ps.failures > MAX_PEER_FAILURES) { this.#banned.add(ps.hex); return 'ban' }
    if (why.code === 'PEER_GONE') for (const u of req.us) ps.missing.add(u)
    return 'keep'
  }

  // Once nothing is pending: requests whose every block arrived from elsewhere (to cancel).
  takeDone (): Req[] {
    const out: Req[] = []
    for (const ps of this.#peers.values()) {
      for (const r of [...ps.inflight]) {
        if (r.us.every(u => this.#state[u] === 2)) {
          ps.inflight.delete(r)
          for (const u of r.us) this.#copies[u]!--
          out.push(r)
        }
      }
    }
    return out
  }

  // Every request in flight (to cancel when the fetch stops).
  inflight (): Req[] {
    return [...this.#peers.values()].flatMap(p => [...p.inflight])
  }

  #mark (ps: PeerState, us: number[], dup: boolean): Req {
    for (const u of us) {
      if (this.#state[u] === 0) {
        this.#state[u] = 1
        this.#pending--
        if (this.#open) this.#openBy(this.#chunks!.of[u]!, -1)
      }
      this.#copies[u]!++
    }
    const req: Req = { peer: ps, us, sentAt: this.#now(), id: 0, dup }
    ps.inflight.add(req)
    return req
  }

  // Blocks a peer may have asked for and not yet answered. Counted in blocks, not requests:
  // requests shrink near the end, and a window of small requests let the links idle between
  // answers at the end of a fetch from several peers.
  #window (ps: PeerState): number {
    // Background, at a whole holder, while other hosts fetch it too: a short queue, so what this
    // host has asked the source for but not yet received (which the others cannot see) stays
    // small. Alone, the full window.
    const min = this.#o.background && ps.whole && this.#partial > 0 ? MIN_WINDOW_SWARM : MIN_WINDOW
    return Math.max(min * this.#batch, Math.min(MAX_WINDOW * this.#batch, Math.ceil(ps.rate * QUEUE_SECONDS / this.#o.blockSize)))
  }

  #peerHas (ps: PeerState, u: number): boolean {
    if (ps.missing.has(u)) return false
    if (ps.whole) return true
    const bits = ps.bits
    if (!bits) return false
    for (const i of this.#entries[u]!.indices) if (i >> 3 < bits.length && (bits[i >> 3]! & (1 << (i & 7))) !== 0) return true
    return false
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
      // A whole holder (the source, whose upload the whole roll-out waits on): only chunks that
      // no connected part-way peer holds, in this host's own order (hosts asking the same
      // source start at different places, so they seldom ask it for the same chunk). Once
      // there are none, it is asked for what others hold only while nothing else is in flight
      // here, so this host never waits for nothing.
      const { order, start } = this.#chunking()
      const avail = this.#avail!
      const open = this.#open!
      // What it withheld, it holds: ask again once the other host has had time to pass it on.
      if (ps.missing.size && this.#now() - ps.missingAt >= WITHHELD_RETRY_MS) ps.missing.clear()
      while (this.#front < order.length && !open[order[this.#front]!]) this.#front++
      // One chunk a request, so that chunks stay whole and peers can tell others they hold them.
      const take = (rare: boolean) => {
        for (let k = this.#front; k < order.length && !us.length; k++) {
          const c = order[k]!
          if (!open[c] || (rare && avail[c]! > 0)) continue
          for (let u = start[c]!; u < start[c + 1]!; u++) if (this.#state[u] === 0 && !ps.missing.has(u)) us.push(u)
        }
      }
      const miss = this.#rareMiss
      if (this.#rare && !(miss?.ps === ps && miss.rare === this.#rare && miss.missing === ps.missing.size && miss.front === this.#front)) {
        take(true)
        this.#rareMiss = us.length ? undefined : { ps, rare: this.#rare, missing: ps.missing.size, front: this.#front }
      }
      if (!us.length && !this.busy) take(false)
      return us
    }
    // A part-way peer: the pending blocks it has in the chunks it was heard of, in order.
    const { start } = this.#chunking()
    const h = ps.hints
    let k = 0
    for (; k < h.length && us.length < this.#batch; k++) {
      const c = h[k]!
      let u = start[c]!
      for (; u < start[c + 1]! && us.length < this.#batch; u++) if (this.#state[u] === 0 && this.#peerHas(ps, u)) us.push(u)
      // A chunk is looked at again once the request is full only where it has more.
      if (u < start[c + 1]!) break
      ps.hinted![c] = 0
    }
    h.splice(0, k)
    return us
  }

  // Chunk c of a part-way peer is to be looked at.
  #hint (ps: PeerState, c: number): void {
    if (!ps.hinted || ps.hinted[c]) return
    ps.hinted[c] = 1
    ps.hints.push(c)
  }

  // Chunks of `#batch` block indices (the same on every host), their order (from the root and
  // this host's key: each host its own), and where each chunk's entries start (entries are in
  // first-index order).
  #chunking (): { order: Uint32Array, start: Uint32Array, of: Uint32Array } {
    if (this.#chunks) return this.#chunks
    const count = Math.ceil(blockCount(this.#o.size, this.#o.blockSize) / this.#batch)
    const start = new Uint32Array(count + 1)
    const of = new Uint32Array(this.#entries.length)
    const open = new Uint16Array(count)
    let u = 0
    for (let c = 0; c < count; c++) {
      start[c] = u
      for (; u < this.#entries.length && this.#entries[u]!.indices[0]! < (c + 1) * this.#batch; u++) {
        of[u] = c
        if (this.#state[u] === 0) open[c]!++
      }
    }
    start[count] = this.#entries.length
    const seed = Buffer.from(this.#o.root)
    for (let i = 0; i < (this.#o.self?.length ?? 0); i++) seed[i % 4]! ^= this.#o.self!.charCodeAt(i) * (i + 1)
    this.#chunks = { order: shuffle(count, seed), start, of }
    this.#avail = new Uint16Array(count)
    this.#open = open
    for (let c = 0; c < count; c++) if (open[c]) this.#rare++
    return this.#chunks
  }

  // A part-way peer's chunks among blocks [from, to): hinted where it holds some of a chunk,
  // counted in #avail once it holds it whole.
  #count (ps: PeerState, from: number, to: number): void {
    const { start } = this.#chunking()
    const avail = this.#avail!
    const has = ps.chunks!
    const last = Math.min(has.length, Math.ceil(to / this.#batch))
    for (let c = Math.floor(from / this.#batch); c < last; c++) {
      if (has[c] || start[c] === start[c + 1]) continue
      // Nothing announced in the chunk's own blocks: nothing to look at (cheap, and most of a
      // Have's range where it joins far-apart writes).
      if (!anyBit(ps.bits, c * this.#batch, (c + 1) * this.#batch)) continue
      let whole = true
      let some = false
      for (let u = start[c]!; u < start[c + 1]!; u++) {
        if (this.#peerHas(ps, u)) some = true
        else whole = false
      }
      if (some) this.#hint(ps, c)
      if (whole) {
        has[c] = 1
        if (avail[c]!++ === 0 && this.#open![c]) this.#rare--
      }
    }
  }

  // Chunk c has `by` more entries pending.
  #openBy (c: number, by: number): void {
    const open = this.#open!
    const was = open[c]! > 0
    open[c]! += by
    if (this.#avail![c] === 0 && was !== (open[c]! > 0)) this.#rare += was ? -1 : 1
  }

  // A part-way peer's chunks no longer count (it left, or its holding changed).
  #forget (ps: PeerState): void {
    if (!ps.chunks) return
    const avail = this.#avail!
    for (let c = 0; c < ps.chunks.length; c++) if (ps.chunks[c] && --avail[c]! === 0 && this.#open![c]) this.#rare++
    ps.chunks = undefined
    this.#partial--
    // Chunks only it held may be asked of a whole holder again.
    this.#front = 0
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
    const now = this.#now()
    // Background: a scan that found nothing is not repeated at once (every answer pumps every
    // peer, and there only old requests are raced).
    if (this.#o.background && now - this.#endgameAt < ENDGAME_SCAN_MS) return us
    const others = [...this.#peers.values()].filter(p => p !== ps).sort((a, b) => a.rate - b.rate)
    // Background: only requests that seem stuck, and a whole holder (the source, whose upload
    // everyone shares) only for ones stuck much longer.
    const minAge = !this.#o.background ? 0 : ps.whole ? ENDGAME_WHOLE_AGE_MS : ENDGAME_AGE_MS
    const bs = this.#o.blockSize
    for (const other of others) {
      let reqs = [...other.inflight]
      if (!this.#o.background && other.rate > 0 && ps.rate > 0) {
        // Foreground: a request is raced only where this peer would bring it sooner than it
        // comes from its own (after what is queued there before it), latest first. The head of
        // a queue is about to arrive: copying it puts duplicates on the wire for nothing.
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
    if (!us.length) this.#endgameAt = now
    return us
  }

  // Gives entries back to pending where no other copy is in flight.
  #release (us: Iterable<number>): void {
    for (const u of us) {
      this.#copies[u]!--
      if (this.#state[u] === 1 && this.#copies[u] === 0) {
        this.#state[u] = 0
        if (this.#open) this.#openBy(this.#chunks!.of[u]!, 1)
        this.#pending++
        if (u < this.#cursor) this.#cursor = u
        // Its chunk may lie behind the swarming pointers: scan from the ends again.
        if (this.#chunks) this.#front = 0
        // Given back: a hint again for the part-way peers that hold it.
        if (this.#o.background) for (const p of this.#peers.values()) if (!p.whole && this.#peerHas(p, u)) this.#hint(p, this.#chunks!.of[u]!)
      }
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

// Some bit of [from, to) is set in `bits` (none: no bitfield, or past its end).
function anyBit (bits: Buffer | undefined, from: number, to: number): boolean {
  if (!bits) return false
  const end = Math.min(bits.length, Math.ceil(to / 8))
  for (let k = from >> 3; k < end; k++) if (bits[k]) return true
  return false
}
