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
  // Background, a part-way peer: ranges of block indices [from, to) it announced that have not
  // been looked at yet, flat.
  hints: number[]
  // When it last announced blocks (a Have) for this image.
  heardAt: number
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
  // Background: request-sized chunks of the image (by block index) in an order from the root.
  #chunks: { order: Uint32Array, start: Uint32Array } | undefined
  #front = 0
  #back = 0
  // Chunks with nothing a whole holder may be asked for (done, in flight, or a part-way peer's).
  readonly #blocked = new Set<number>()
  #swarmView: { partial: PeerState[], fetching: string[], rank: number } | undefined
  #entryIndex: Int32Array | undefined

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
    const ps: PeerState = { hex, inflight: new Set(), missing: new Set(), rate: 0, lastAt: 0, failures: 0, hints: [0, blockCount(this.#o.size, this.#o.blockSize)], heardAt: this.#now(), whole: false, bits: undefined, closed: false }
    this.#peers.set(hex, ps)
    this.#swarmView = undefined
    this.setHolding(ps, holding.whole, holding.bits)
    return ps
  }

  // What the peer holds now (its advert, its latest Have bitfield).
  setHolding (ps: PeerState, whole: boolean, bits: Buffer | undefined): void {
    if (whole !== ps.whole) this.#swarmView = undefined
    // What it answered missing while part-way, it holds now (else those blocks, asked of it
    // alone, waited for the peer wait and failed the fetch).
    if (whole && !ps.whole) ps.missing.clear()
    ps.whole = whole
    ps.bits = bits
  }

  // The peer announced blocks [start, start + count) (a Have).
  heard (ps: PeerState, start?: number, count?: number): void {
    ps.heardAt = this.#now()
    if (this.#o.background && start !== undefined && count !== undefined) this.#hint(ps, start, start + count)
  }

  // Some peer now holds the whole image: what part-way peers blocked may be asked of it.
  wholeHolderAppeared (): void {
    this.#blocked.clear()
  }

  // Takes the peer out; its requests go back to pending. Returns them (to cancel on the wire).
  removePeer (ps: PeerState): Req[] {
    if (this.#peers.get(ps.hex) !== ps) return []
    this.#peers.delete(ps.hex)
    this.#swarmView = undefined
    this.#blocked.clear()
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
      if (this.#state[u] === 0) { this.#state[u] = 1; this.#pending-- }
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
    const min = this.#o.background && ps.whole && this.#view().fetching.length > 1 ? MIN_WINDOW_SWARM : MIN_WINDOW
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

  // Background: the part-way peers, and the hosts fetching this image (itself and them, by key)
  // with its rank among them; kept until the peers or their holdings change.
  #view (): { partial: PeerState[], fetching: string[], rank: number } {
    if (this.#swarmView) return this.#swarmView
    const partial = [...this.#peers.values()].filter(p => !p.whole && !p.closed)
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
      const now = this.#now()
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
    const map = new Int32Array(blockCount(this.#o.size, this.#o.blockSize)).fill(-1)
    this.#entries.forEach((e, u) => { for (const i of e.indices) map[i] = u })
    this.#entryIndex = map
    return map
  }

  // Chunks of `#batch` block indices (the same on every host), their order (from the root),
  // and where each chunk's entries start (entries are in first-index order).
  #chunking (): { order: Uint32Array, start: Uint32Array } {
    if (this.#chunks) return this.#chunks
    const count = Math.ceil(blockCount(this.#o.size, this.#o.blockSize) / this.#batch)
    const start = new Uint32Array(count + 1)
    let u = 0
    for (let c = 0; c < count; c++) {
      start[c] = u
      while (u < this.#entries.length && this.#entries[u]!.indices[0]! < (c + 1) * this.#batch) u++
    }
    start[count] = this.#entries.length
    this.#chunks = { order: shuffle(count, this.#o.root), start }
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
    const now = this.#now()
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
    return us
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
