// The whole holder's rule for roll-outs (daemon/fleet/spread-guard.ts): each block to one host
// first, the same host served again, a refused host served when it asks again, everything again
// after the spread time, a bounded memory.

import t from 'tap'
import { SpreadGuard } from '../daemon/fleet/spread-guard.js'

function hashes (...ids: number[]): Buffer {
  const b = Buffer.alloc(ids.length * 32)
  ids.forEach((id, j) => b.writeUInt32LE(id, j * 32))
  return b
}

t.test('a block sent to one host is withheld from another, which gets it when it asks again', async t => {
  let now = 0
  const g = new SpreadGuard({ spreadMs: 60_000, now: () => now })
  t.same([...g.filter('a', hashes(1, 2, 3))], [1, 1, 1], 'the first asker gets every block')
  t.same([...g.filter('b', hashes(2, 3, 4))], [0, 0, 1], 'another asker gets only the new one')
  t.same([...g.filter('c', hashes(2))], [0], 'and so does a third')
  t.same([...g.filter('a', hashes(1, 2))], [1, 1], 'the first asker again: served (a retry)')
  now = 2000
  t.same([...g.filter('b', hashes(2, 3))], [1, 1], 'a host refused before, asking again, is served')
  t.same([...g.filter('b', hashes(1))], [0], 'a block it was not refused yet is withheld')
  now = 60_000
  t.same([...g.filter('d', hashes(1, 2, 3))], [1, 1, 1], 'after the spread time, served to anyone')
})

t.test('memory is bounded: the oldest blocks are forgotten first', async t => {
  let now = 0
  const g = new SpreadGuard({ maxRemembered: 4, now: () => now })
  g.filter('a', hashes(1, 2, 3, 4))
  now = 1
  g.filter('a', hashes(5, 6))
  t.equal(g.size, 4)
  t.same([...g.filter('b', hashes(1, 2, 5, 6))], [1, 1, 0, 0], 'the oldest were forgotten, the newest are withheld')
})
