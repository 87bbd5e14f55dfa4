// What a fetch tells its peers (daemon/fetch/have-broadcaster.ts): the whole bitfield once, then
// what changed; in the background, what was written, in at most a few ranges a round however
// scattered the writes, each range covering what changed.

import t from 'tap'
import { HaveBroadcaster, type HaveTimers } from '../daemon/fetch/have-broadcaster.js'

function harness (bytes: number) {
  const sent: Array<{ start: number, bits: Buffer }> = []
  const pending: Array<() => void> = []
  const timers: HaveTimers = { set: fn => { pending.push(fn); return fn }, clear: h => { const i = pending.indexOf(h as () => void); if (i >= 0) pending.splice(i, 1) } }
  const bits = Buffer.alloc(bytes)
  const h = new HaveBroadcaster({ broadcastHave: (_root, b, startByte) => sent.push({ start: startByte ?? 0, bits: Buffer.from(b) }) }, Buffer.alloc(32), bits, timers)
  return { h, bits, sent, tick: () => { while (pending.length) pending.shift()!() } }
}

t.test('background: scattered writes go out in at most 4 ranges a round, covering every change', async t => {
  const { h, bits, sent, tick } = harness(4096)
  const written: number[] = []
  for (let k = 0; k < 40; k++) {
    const i = k * 800 + 3
    bits[i >> 3]! |= 1 << (i & 7)
    written.push(i)
  }
  h.written(written)
  t.equal(sent.length, 0, 'nothing before the round')
  tick()
  t.ok(sent.length >= 1 && sent.length <= 4, `${sent.length} ranges`)
  for (const i of written) {
    const r = sent.find(s => s.start <= i >> 3 && (i >> 3) < s.start + s.bits.length)
    t.ok(r && (r.bits[(i >> 3) - r.start]! & (1 << (i & 7))), `block ${i} announced`)
    if (!r) break
  }
})

t.test('background: nearby writes go out as one range; foreground flushes send what changed', async t => {
  const { h, bits, sent, tick } = harness(1024)
  for (const i of [80, 81, 95]) bits[i >> 3]! |= 1 << (i & 7)
  h.written([80, 81, 95])
  tick()
  t.same(sent.map(s => [s.start, s.bits.length]), [[10, 2]], 'one range of the two changed bytes')
  sent.length = 0
  h.flushed(Buffer.from(bits))
  t.equal(sent[0]!.bits.length, 1024, 'the first flush: the whole bitfield')
  sent.length = 0
  bits[500] = 1
  h.flushed(Buffer.from(bits))
  t.same(sent.map(s => [s.start, s.bits.length]), [[500, 1]], 'then only what changed')
})
