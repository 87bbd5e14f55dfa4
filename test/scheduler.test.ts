// The fetch scheduler on its own: fake peers (what each holds, how it answers) and a fake clock,
// no sockets, no files. Endgame races, swarming shares, part-way peers, peers dropped mid-request.

import t from 'tap'
import { Scheduler, type PeerState, type Req, type SchedulerOptions } from '../daemon/fetch/scheduler.js'

const BS = 4096

// A fetch of n distinct blocks, one entry each, with requests of `batch` blocks.
function scheduler (n: number, batch: number, extra: Partial<SchedulerOptions> = {}) {
  let now = 1000
  const clock = { now: () => now, advance: (ms: number) => { now += ms } }
  const entries = Array.from({ length: n }, (_, i) => ({ indices: [i] }))
  const s = new Scheduler({ entries, size: n * BS, blockSize: BS, batch, root: Buffer.alloc(32, 7), now: clock.now, ...extra })
  return { s, clock }
}

// A bitfield holding blocks [from, to).
function bits (n: number, from: number, to: number): Buffer {
  const b = Buffer.alloc(Math.ceil(n / 8))
  for (let i = from; i < to; i++) b[i >> 3]! |= 1 << (i & 7)
  return b
}

// Answers a request with every block present and valid.
function answer (s: Scheduler, req: Req) {
  return s.answer(req, req.us.map(() => BS), () => true, () => BS)
}

function blocksOf (reqs: Req[]): number[] {
  return reqs.flatMap(r => r.us).sort((a, b) => a - b)
}

t.test('one whole peer: requests in index order up to its window, then more as answers come', async t => {
  const { s, clock } = scheduler(300, 4)
  const p = s.addPeer('a', { whole: true, bits: undefined })
  const first = s.assign(p)
  t.equal(first.length, 8, 'a window of 8 requests at the start (no rate measured yet)')
  t.same(first[0]!.us, [0, 1, 2, 3], 'full requests from the lowest index')
  t.same(blocksOf(first), Array.from({ length: 32 }, (_, i) => i))
  t.equal(s.pending, 268)
  t.same(s.assign(p), [], 'nothing more while the window is full')
  // 16 KiB in a second: a slow peer keeps the minimum window.
  clock.advance(1000)
  const out = answer(s, first[0]!)
  t.same(out?.got, [0, 1, 2, 3])
  t.equal(s.assign(p).length, 1, 'an answer frees one request\'s worth')
  // 16 KiB in a millisecond: a fast peer's window grows to a quarter second of data (capped).
  clock.advance(1)
  answer(s, first[1]!)
  t.ok(s.assign(p).length > 8, 'a fast peer is given a longer queue')
  // Drain.
  for (;;) {
    const reqs = s.peers().flatMap(x => [...x.inflight])
    if (!reqs.length) break
    for (const r of reqs) answer(s, r)
    s.assign(p)
  }
  t.ok(s.finished)
  t.equal(s.done, 300)
})

t.test('a part-way peer is asked only for what it announced; a whole peer for the rest', async t => {
  const { s } = scheduler(64, 4)
  const part = s.addPeer('part', { whole: false, bits: bits(64, 0, 16) })
  const whole = s.addPeer('whole', { whole: true, bits: undefined })
  const toPart = s.assign(part)
  t.ok(blocksOf(toPart).every(u => u < 16), 'the part-way peer gets only blocks 0..15')
  t.equal(blocksOf(toPart).length, 16)
  const toWhole = s.assign(whole)
  t.ok(blocksOf(toWhole).every(u => u >= 16), 'the whole peer gets what is not asked already')
  t.equal(s.assign(part).length, 0, 'the part-way peer has nothing more to give')
  // It announces more: those become its work once pending.
  s.setHolding(part, false, bits(64, 0, 64))
  for (const r of toWhole) s.answer(r, r.us.map(() => 0), () => false, () => BS)
  t.ok(s.assign(part).length > 0, 'blocks the whole peer lacked go to the part-way peer that has them')
})

t.test('endgame: an idle peer races blocks in flight at another; the first answer wins', async t => {
  const { s } = scheduler(8, 4)
  const slow = s.addPeer('slow', { whole: true, bits: undefined })
  const fast = s.addPeer('fast', { whole: true, bits: undefined })
  const toSlow = s.assign(slow)
  t.same(blocksOf(toSlow), [0, 1, 2, 3, 4, 5, 6, 7], 'the first peer takes everything')
  t.equal(s.pending, 0)
  const race = s.assign(fast)
  t.equal(race.length, 1, 'one duplicate request at a time')
  t.ok(race[0]!.dup)
  t.same(s.assign(fast), [], 'no second duplicate while one is out')
  const won = answer(s, race[0]!)
  t.ok(won!.got.length > 0)
  const cancel = s.takeDone()
  t.ok(cancel.every(r => r.peer === slow), 'what arrived elsewhere is cancelled at the slow peer')
  t.ok(cancel.length >= 1)
  // The slow peer's late answer for a block already in place counts nothing twice.
  const late = toSlow.find(r => !cancel.includes(r))
  if (late) answer(s, late)
  const more = s.assign(fast)
  for (const r of more) answer(s, r)
  for (const r of [...slow.inflight]) answer(s, r)
  t.ok(s.finished)
  t.equal(s.done, 8, 'every block counted once')
})

t.test('a peer dropped mid-request: its blocks go back to pending for the others', async t => {
  const { s } = scheduler(32, 4)
  const a = s.addPeer('a', { whole: true, bits: undefined })
  const b = s.addPeer('b', { whole: true, bits: undefined })
  const toA = s.assign(a)
  t.equal(s.pending, 0)
  t.same(s.assign(b).filter(r => !r.dup).length, 0)
  const cancelled = s.removePeer(a)
  t.same(blocksOf(cancelled), blocksOf(toA), 'its requests are returned, to be cancelled')
  t.equal(s.peer('a'), undefined)
  t.ok(s.pending > 0, 'its blocks are pending again')
  const toB = s.assign(b)
  t.ok(toB.some(r => !r.dup))
  t.same(answer(s, toA[0]!), undefined, 'a late answer from the dropped peer is ignored')
  for (;;) {
    const reqs = [...b.inflight]
    if (!reqs.length) break
    for (const r of reqs) answer(s, r)
    s.assign(b)
  }
  t.ok(s.finished)
})

t.test('a bad block: the rest of the request goes back, and the caller is told which', async t => {
  const { s } = scheduler(8, 4)
  const p = s.addPeer('p', { whole: true, bits: undefined })
  const [req] = s.assign(p)
  const out = s.answer(req!, req!.us.map(() => BS), j => j !== 2, () => BS)
  t.equal(out?.bad, req!.us[2])
  t.same(out?.got, req!.us.slice(0, 2))
  t.equal(s.pending, 2 + 0, 'the bad block and the one after it are pending again')
})

t.test('failures: a peer that lacks blocks is not asked again for them; many failures ban it', async t => {
  const { s } = scheduler(64, 4)
  const p = s.addPeer('p', { whole: true, bits: undefined })
  const reqs = s.assign(p)
  t.equal(s.failed(reqs[0]!, { closed: false, code: 'PEER_GONE' }), 'keep')
  t.ok(reqs[0]!.us.every(u => p.missing.has(u)))
  t.equal(s.failed(reqs[0]!, { closed: false }), undefined, 'a request fails once')
  for (let k = 0; k < 3; k++) {
    const [r] = [...p.inflight]
    t.equal(s.failed(r!, { closed: false }), k < 2 ? 'keep' : 'ban', `failure ${k + 2}`)
  }
  t.ok(s.isBanned('p'), 'more than three failures ban the peer from this fetch')
  const q = s.addPeer('q', { whole: true, bits: undefined })
  const [r] = s.assign(q)
  t.equal(s.failed(r!, { closed: true }), 'remove', 'a request failed because the connection closed removes the peer')
})

t.test('swarming: with another host fetching, a whole holder is asked for this host\'s share first', async t => {
  const n = 64
  const batch = 4
  // This host is 'b'; 'a' is another receiver (part-way, holding nothing yet); 'src' holds it all.
  const { s, clock } = scheduler(n, batch, { background: true, self: 'b' })
  const other = s.addPeer('a', { whole: false, bits: Buffer.alloc(n / 8) })
  const src = s.addPeer('src', { whole: true, bits: undefined })
  const mine = s.assign(src)
  t.ok(mine.length > 0)
  t.ok(mine.length <= 2, 'a short window at the source while others fetch too')
  const chunks = new Set(blocksOf(mine).map(u => Math.floor(u / batch)))
  // Ranks: 'a' 0, 'b' 1 of 2; chunk c is b's when c mod 2 is 1 (in the root's order).
  t.ok([...chunks].every(c => c % 2 === 1), 'only chunks that are this host\'s share')
  // The other host announces blocks: they are not asked of the source.
  s.setHolding(other, false, bits(n, 0, 8))
  s.heard(other, 0, 8)
  const fromOther = s.assign(other)
  t.ok(blocksOf(fromOther).every(u => u < 8), 'a part-way peer is asked for what it announced')
  // Once this host's own share is asked for and the other host has been silent long enough,
  // the source is asked for that host's share too.
  for (const r of [...src.inflight]) answer(s, r)
  let asked: number[] = []
  for (let k = 0; k < 40; k++) {
    const reqs = s.assign(src)
    asked.push(...blocksOf(reqs))
    for (const r of reqs) answer(s, r)
    if (!reqs.length) break
  }
  t.ok(asked.every(u => Math.floor(u / batch) % 2 === 1 || u < 8), 'nothing of the other host\'s share while it is heard from')
  clock.advance(5000)
  asked = []
  for (let k = 0; k < 40; k++) {
    const reqs = s.assign(src)
    asked.push(...blocksOf(reqs))
    for (const r of reqs) answer(s, r)
    if (!reqs.length) break
  }
  t.ok(asked.some(u => Math.floor(u / batch) % 2 === 0), 'a silent host\'s share is asked of the source')
})

t.test('peer state is plain data: a closed peer gets no requests', async t => {
  const { s } = scheduler(8, 4)
  const p: PeerState = s.addPeer('p', { whole: true, bits: undefined })
  p.closed = true
  t.same(s.assign(p), [])
  t.notOk(s.busy)
})
