import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { makeImagePair, pollJob, sha256, startFleet, tempDir, waitPeers } from '../testing/fleet.js'

t.test('three hosts: a host part-way through a fetch serves a third; then both serve a fourth fetch', async t => {
  const fleet = await startFleet(3, t.teardown)
  const [a, b, c] = fleet.daemons as [any, any, any]
  const [, keyB] = fleet.keys
  const dir = await tempDir('osfarm-three-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 16384, 20, 3)
  const img = await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  // Slow enough (about 13 MB at 1 MB/s) that B is still part-way when C starts, even when each
  // osfarmctl call takes seconds on a loaded CI host.
  await a.ctlJson('fleet', 'init', '--upload-limit', String(1_000_000))
  for (const d of [a, b, c]) await waitPeers(d, 2)
  const jobB = await b.ctlJson('fetch', 'derived', '--no-wait')
  await pollJob(b, jobB.id, j => j.progress.phase.startsWith('fetch') && j.progress.done > j.progress.total * 0.1)
  const jobC = await c.ctlJson('fetch', img.root, '--from', keyB!, '--no-wait')
  const midB = await b.ctlJson('job', 'show', jobB.id)
  t.equal(midB.state, 'running', 'C started while B was part-way')
  const endC = await pollJob(c, jobC.id, j => j.state !== 'running')
  const endB = await pollJob(b, jobB.id, j => j.state !== 'running')
  t.equal(endB.state, 'done')
  t.equal(endC.state, 'done', endC.error?.message ?? 'C done')
  t.same(Object.keys(endC.result.stats.peers), [keyB], 'C received only from B')
  t.ok(endC.result.stats.received > 0)
  for (const d of [b, c]) {
    const out = path.join(dir, `out-${d === b ? 'b' : 'c'}.img`)
    await d.ctlJson('image', 'export', img.root.slice(0, 16), '-o', out)
    t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
  }
})

t.test('a fetch spreads over every holder', async t => {
  const fleet = await startFleet(3, t.teardown, { uploadLimit: 4_000_000 })
  const [a, b, c] = fleet.daemons as [any, any, any]
  const dir = await tempDir('osfarm-spread-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 8192, 20, 5)
  for (const d of [a, b]) await d.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await waitPeers(c, 2)
  const r = await c.ctlJson('fetch', 'derived').catch((err: Error) => { console.error(c.output().split('\n').slice(-30).join('\n')); throw err })
  const peers = Object.values(r.stats.peers) as any[]
  t.equal(peers.length, 2, 'blocks came from both holders')
  const [p, q] = peers.map(x => x.blocks)
  t.ok(Math.min(p, q) > Math.max(p, q) * 0.4, `spread evenly between equal peers (${p} and ${q})`)
})
