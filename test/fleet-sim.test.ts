// The fleet simulator (scripts/sim/fleet-sim.ts) on small fleets: every receiver that stays gets
// the image, the source sends at least one copy, connections stay within maxPeers in a fleet
// larger than that, receivers that leave do not stop the others, and a run repeats exactly.
// Figures (seconds, copies) are the simulator's output, not asserted here.

import t from 'tap'
import { simulate } from '../scripts/sim/fleet-sim.js'

const small = { imageBytes: 16 << 20, dataBytes: 4 << 20, rate: 12.5e6 }

t.test('a full mesh: every receiver finishes, the source sends at least one copy', async t => {
  const r = simulate({ ...small, hosts: 6 })
  t.equal(r.finished, 5)
  t.notOk(r.timedOut)
  t.ok(r.sourceCopies >= 0.99, `the source sent ${r.sourceCopies.toFixed(2)} copies`)
  t.equal(r.maxConnections, 5, 'a fleet that fits is a full mesh')
  t.ok(r.p50 <= r.p99 && r.p99 <= r.max)
})

t.test('a fleet larger than maxPeers: bounded connections, adverts passed on, everyone finishes', async t => {
  const r = simulate({ ...small, hosts: 40, maxPeers: 8 })
  t.ok(r.maxConnections <= 8, `at most ${r.maxConnections} connections`)
  t.equal(r.finished, 39, 'every receiver heard of the image and got it')
  const quiet = simulate({ ...small, hosts: 40, maxPeers: 8, relayAdverts: false })
  t.equal(quiet.finished, 39, 'without offers too, as hosts that finish advertise')
})

t.test('churn: receivers that leave part-way do not stop the others', async t => {
  const r = simulate({ ...small, hosts: 30, maxPeers: 8, churn: 0.2 })
  t.equal(r.left, 6)
  t.equal(r.finished, 23)
  t.notOk(r.timedOut)
})

t.test('the same seed gives the same run; bad options are refused', async t => {
  t.same(simulate({ ...small, hosts: 8, seed: 3 }), simulate({ ...small, hosts: 8, seed: 3 }))
  t.throws(() => simulate({ hosts: 1 }), /at least 2/)
})
