// fetch --limit: a fetch receives no faster than asked (a floor on its duration, never a ceiling).

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { makeImagePair, sha256, startFleet, tempDir, waitPeers } from '../testing/fleet.js'

t.test('fetch --limit caps the receive rate', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [any, any]
  const dir = await tempDir('osfarm-limit-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 2048)
  await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await waitPeers(b, 1)
  const bad = await b.ctl('fetch', 'derived', '--limit', 'fast')
  t.equal(bad.exitCode, 64)
  t.match(bad.stderr, /BAD_PARAMS: not a rate: "fast"/)
  const limit = 1_000_000
  const r = await b.ctlJson('fetch', 'derived', '--limit', '1M')
  const s = r.stats
  t.ok(s.rawBytes > 3 * limit, `enough data to measure (${s.rawBytes} bytes)`)
  // The token bucket lets a burst of 2 MiB (its floor) through at once; the rest waits its turn.
  const floorMs = (s.rawBytes - (2 << 20)) / limit * 1000
  t.ok(s.elapsedMs >= floorMs * 0.95, `received ${s.rawBytes} bytes in ${s.elapsedMs} ms under a ${limit} B/s limit (at least ${Math.round(floorMs)} ms)`)
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})
