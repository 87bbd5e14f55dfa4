// The zstd level of a served response (daemon/fleet/block-packer.ts): priced by what it costs
// at the rate served against the idle cores and the operator's share, with costs measured here.

import t from 'tap'
import { PackCosts, packBlocks, packLevel } from '../daemon/fleet/block-packer.js'
import { blockPool } from '../daemon/blocks/block-pool.js'
import { hash } from '../daemon/blocks/hash.js'

// Core-seconds per byte: level 1 at 500 MB/s a core, 3 at 350, 5 at 180, 7 at 125.
const cost = (level: number) => ({ 1: 1 / 500e6, 3: 1 / 350e6, 5: 1 / 180e6, 7: 1 / 125e6 } as Record<number, number>)[level]!

t.test('packLevel: the fastest while the CPU is the limit; harder only where it fits the idle cores and the share', async t => {
  const at = (o: Partial<Parameters<typeof packLevel>[0]>) => packLevel({ linkBound: true, idleCores: 2, shareCores: 0.5, rate: 30e6, cost, ...o })
  t.equal(at({ linkBound: false }), 1, 'not link-bound: level 1')
  t.equal(at({}), 7, '30 MB/s at level 7 is a quarter core: within half a core')
  t.equal(at({ rate: 300e6 }), 1, '300 MB/s: even level 3 would take most of a core')
  t.equal(at({ rate: 80e6 }), 5, '80 MB/s: level 5 fits half a core, level 7 does not')
  t.equal(at({ shareCores: 0 }), 1, 'a share of 0: always the fastest')
  t.equal(at({ idleCores: 0.05 }), 1, 'a host busy with its VMs: the fastest, whatever the share')
  t.equal(at({ rate: 0 }), 7, 'nothing served yet: any level fits')
})

t.test('PackCosts: measured costs replace the defaults; the rate follows what is packed', async t => {
  let now = 0
  const c = new PackCosts(now)
  t.ok(c.cost(7) > c.cost(1), 'unmeasured, a harder level costs more')
  // A MiB every 10 ms for 10 s.
  for (let i = 0; i < 1000; i++) c.observe(1, 1 << 20, 1, now += 10)
  t.ok(Math.abs(c.cost(1) - 1e-3 / (1 << 20)) < 1e-12, 'level 1 as measured: 1 ms a MiB')
  t.ok(c.cost(7) > c.cost(1) * 3, 'level 7 scaled from the measured level 1')
  t.ok(c.rate > 50e6 && c.rate < 150e6, `about 100 MB/s packed (${Math.round(c.rate / 1e6)} MB/s)`)
  t.ok(c.using > 0, 'cores in use at that rate')
})

t.test('packBlocks: a link-bound response under a share of 0 is still compressed, and unpacks to blocks that check', async t => {
  const blocks = Buffer.alloc(64 * 4096, 'osfarm block ')
  const hashes = Buffer.concat(Array.from({ length: 64 }, (_, i) => hash(blocks.subarray(i * 4096, (i + 1) * 4096))))
  const host = { readBlocks: async () => ({ sizes: new Array(64).fill(4096), data: Buffer.from(blocks) }), serveCpuShare: 0 }
  const r = await packBlocks(host, hashes, true, true)
  t.equal(r.codec, 1, 'zstd')
  t.ok(r.data.length < blocks.length / 10, 'compressed')
  const back = await blockPool().unpack(true, r.data, r.raw, r.sizes, hashes)
  t.ok(back.data.equals(blocks), 'unpacks to the blocks')
  t.ok(back.valid.every(v => v === 1), 'every block checks')
})

t.teardown(() => blockPool().close())
