import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { makeImagePair, sha256, startFleet, tempDir, waitPeers } from '../testing/fleet.js'

t.test('two hosts: fetch reuses local blocks, receives only the absent ones, byte-identical', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [any, any]
  const dir = await tempDir('osfarm-pair-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 8192)
  await a.ctlJson('image', 'import', pair.base, '--name', 'base')
  await b.ctlJson('image', 'import', pair.base, '--name', 'base')
  const derived = await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await waitPeers(b, 1)
  const r = await b.ctlJson('fetch', 'derived')
  t.equal(r.image.root, derived.root, 'same root')
  t.equal(r.image.origin, 'fetch')
  const s = r.stats
  t.equal(s.received, pair.absentBlocks, `received exactly the ${pair.absentBlocks} absent blocks`)
  t.ok(s.inPlace > 4500, `most blocks reused in place (${s.inPlace})`)
  t.ok(s.copiedLocal > 0, `moved blocks copied locally (${s.copiedLocal})`)
  t.equal(s.badBlocks, 0)
  // The manifest came as a delta against base, which both hosts hold: the moved blocks named by
  // where they lie in base, only the new blocks' hashes in full.
  const whole = 17 + Math.ceil(r.image.blocks / 8) + (r.image.blocks - r.image.zeroBlocks) * 32
  t.ok(s.manifestBytes < whole / 2, `manifest as a delta: ${s.manifestBytes} bytes, ${whole} whole`)
  // Wire bytes ≈ absent blocks compressed + manifest; framing is small.
  t.ok(s.wireBytes < s.rawBytes, `compressed on the wire: ${s.wireBytes} < ${s.rawBytes}`)
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
  // Fetching again is a no-op.
  const again = await b.ctlJson('fetch', 'derived')
  t.equal(again.alreadyPresent, true)
  // B now advertises it: A sees B holding it.
  const peers = await a.ctlJson('peer', 'ls')
  t.equal(peers.length, 1)

  // The same content removed everywhere, then registered again under another name and labels:
  // it is advertised as it is now, not as it was (the old advert is dropped with the image).
  await b.ctlJson('image', 'rm', 'derived')
  await a.ctlJson('image', 'rm', 'derived')
  await a.ctlJson('image', 'import', pair.derived, '--name', 'derived2', '--label', 'stage=2')
  const r2 = await b.ctlJson('fetch', 'derived2')
  t.equal(r2.image.root, derived.root, 'same content')
  t.equal(r2.image.name, 'derived2', 'under its new name')
  t.same(r2.image.labels, ['stage=2'], 'with its new labels')
})
