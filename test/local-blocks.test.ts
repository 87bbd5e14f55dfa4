// The block locator serving a batch: where each block is (file ranges merged where contiguous),
// and the same blocks read here, where a file that cannot be read reports its blocks missing.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { blockHash } from '../daemon/blocks/manifest.js'
import { LocalBlocks } from '../daemon/blocks/local-blocks.js'

const BS = 4096

t.test('locate and read a batch across volumes; an unreadable volume\'s blocks are missing', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-local-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const a = crypto.randomBytes(4 * BS)
  const b = crypto.randomBytes(2 * BS)
  await fs.writeFile(path.join(dir, 'a.img'), a)
  await fs.writeFile(path.join(dir, 'b.img'), b)
  const hasher = new BlockHasher(1)
  t.teardown(() => hasher.close())
  const ma = await hasher.indexFile(path.join(dir, 'a.img'), { blockSize: BS })
  const mb = await hasher.indexFile(path.join(dir, 'b.img'), { blockSize: BS })
  const local = new LocalBlocks()
  t.teardown(() => local.close())
  local.addVolume('a', path.join(dir, 'a.img'), ma)
  local.addVolume('b', path.join(dir, 'b.img'), mb)
  // a0 a1 (contiguous), a missing block, b1, a3.
  const hashes = Buffer.concat([blockHash(ma, 0), blockHash(ma, 1), crypto.randomBytes(32), blockHash(mb, 1), blockHash(ma, 3)])
  const places = local.locateBlocks(hashes)
  t.same(places.sizes, [BS, BS, 0, BS, BS])
  t.same(places.reads, [
    { path: path.join(dir, 'a.img'), pos: 0, len: 2 * BS },
    { path: path.join(dir, 'b.img'), pos: BS, len: BS },
    { path: path.join(dir, 'a.img'), pos: 3 * BS, len: BS }
  ], 'one range per run, in request order')
  const want = Buffer.concat([a.subarray(0, 2 * BS), b.subarray(BS), a.subarray(3 * BS)])
  const read = await local.readBlocks(hashes)
  t.same(read.sizes, [BS, BS, 0, BS, BS])
  t.ok(read.data.equals(want), 'read back in request order')
  // b's file goes: its block is reported missing, the others still come.
  await fs.rm(path.join(dir, 'b.img'))
  const fresh = new LocalBlocks()
  t.teardown(() => fresh.close())
  fresh.addVolume('a', path.join(dir, 'a.img'), ma)
  fresh.addVolume('b', path.join(dir, 'b.img'), mb)
  const partial = await fresh.readBlocks(hashes)
  t.same(partial.sizes, [BS, BS, 0, 0, BS])
  t.ok(partial.data.equals(Buffer.concat([a.subarray(0, 2 * BS), a.subarray(3 * BS)])))
})
