// The block pool's workers: zstd both ways, every block checked against its hash, and blocks
// written straight to a fetch's target (at every offset that holds them; a bad block nowhere).

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { BlockPool } from '../daemon/blocks/block-pool.js'
import { hash } from '../daemon/blocks/hash.js'

const BS = 4096

function blocks (n: number): Buffer[] {
  // Compressible, and each block different.
  return Array.from({ length: n }, (_, i) => Buffer.concat([Buffer.alloc(BS - 64, i + 1), crypto.randomBytes(64)]))
}

t.test('pack and unpack check every block against its hash', async t => {
  const pool = new BlockPool(2)
  t.teardown(() => pool.close())
  const bs = blocks(4)
  const hashes = Buffer.concat(bs.map(b => hash(b)))
  const packed = await pool.pack(Buffer.concat(bs), 1, 0.05)
  t.ok(packed.compressed, 'compressible data is packed')
  t.ok(packed.data.length < 4 * BS / 2)
  const got = await pool.unpack(true, packed.data, 4 * BS, [BS, BS, BS, BS], hashes)
  t.same([...got.valid], [1, 1, 1, 1])
  t.ok(got.data.equals(Buffer.concat(bs)))
  // The same payload checked against other hashes: block 2 does not match.
  const wrong = Buffer.from(hashes)
  wrong[2 * 32] ^= 1
  const bad = await pool.unpack(true, packed.data, 4 * BS, [BS, BS, BS, BS], wrong)
  t.same([...bad.valid], [1, 1, 0, 1])
  await t.rejects(pool.unpack(true, Buffer.from('not zstd at all'), 4 * BS, [BS, BS, BS, BS], hashes), /bad zstd data/)
})

t.test('unpack into a file writes each valid block at all its offsets, a bad one nowhere', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-pool-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'target.img')
  await fs.writeFile(file, Buffer.alloc(8 * BS))
  const pool = new BlockPool(1)
  t.teardown(() => pool.close())
  const bs = blocks(3)
  const hashes = Buffer.concat(bs.map(b => hash(b)))
  hashes[1 * 32] ^= 1 // block 1 will not match
  const packed = await pool.pack(Buffer.concat(bs), 1, 0.05)
  // Block 0 at slots 0 and 5 (a duplicate), block 1 at 1, block 2 at 2 and 3 (a run).
  const at = [[0, 5 * BS], [1 * BS], [2 * BS, 3 * BS]]
  const got = await pool.unpack(packed.compressed, packed.data, 3 * BS, [BS, BS, BS], hashes, false, { path: file, at })
  t.same([...got.valid], [1, 0, 1])
  t.equal(got.data.length, 0, 'written blocks do not come back')
  const img = await fs.readFile(file)
  const slot = (i: number) => img.subarray(i * BS, (i + 1) * BS)
  t.ok(slot(0).equals(bs[0]!) && slot(5).equals(bs[0]!), 'block 0 at both its offsets')
  t.ok(slot(1).equals(Buffer.alloc(BS)), 'the bad block is not written')
  t.ok(slot(2).equals(bs[2]!) && slot(3).equals(bs[2]!), 'block 2 at both its offsets')
  t.ok(slot(4).equals(Buffer.alloc(BS)) && slot(6).equals(Buffer.alloc(BS)), 'nothing else touched')
  // A target that cannot be written is this host's failure (IO_ERROR), not the payload's.
  await t.rejects(pool.unpack(packed.compressed, packed.data, 3 * BS, [BS, BS, BS], hashes, false, { path: path.join(dir, 'missing', 'x.img'), at }), { code: 'IO_ERROR' })
})

t.test('packFrom reads file ranges on the worker and packs them', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-pool-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const bs = blocks(4)
  const a = path.join(dir, 'a.img')
  const b = path.join(dir, 'b.img')
  await fs.writeFile(a, Buffer.concat([bs[0]!, bs[1]!, bs[2]!]))
  await fs.writeFile(b, bs[3]!)
  const pool = new BlockPool(1)
  t.teardown(() => pool.close())
  const reads = [{ path: a, pos: BS, len: 2 * BS }, { path: b, pos: 0, len: BS }, { path: a, pos: 0, len: BS }]
  const want = Buffer.concat([bs[1]!, bs[2]!, bs[3]!, bs[0]!])
  const packed = await pool.packFrom(reads, 1, 0.05)
  t.ok(packed.compressed)
  const hashes = Buffer.concat([bs[1]!, bs[2]!, bs[3]!, bs[0]!].map(x => hash(x)))
  const got = await pool.unpack(true, packed.data, 4 * BS, [BS, BS, BS, BS], hashes)
  t.ok(got.data.equals(want), 'ranges come back in order')
  t.same([...got.valid], [1, 1, 1, 1])
  const plain = await pool.packFrom(reads, 0, 0.05)
  t.notOk(plain.compressed, 'level 0: raw')
  t.ok(plain.data.equals(want))
  await t.rejects(pool.packFrom([{ path: b, pos: 0, len: 2 * BS }], 1, 0.05), { code: 'IO_ERROR' }, 'a short file is this host\'s error')
  await t.rejects(pool.packFrom([{ path: path.join(dir, 'gone.img'), pos: 0, len: BS }], 1, 0.05), { code: 'IO_ERROR' })
})
