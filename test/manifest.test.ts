import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { hash } from '../daemon/blocks/hash.js'
import { blockHash, blockLength, decodeManifest, encodeManifest, isZeroSlot, zeroBlockCount } from '../daemon/blocks/manifest.js'

t.test('indexes blocks, marks zero blocks, root round-trips', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-manifest-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const bs = 4096
  // 3 random blocks, 2 zero blocks, a repeated block, then a short tail of 100 bytes.
  const blocks = [randomBlock(bs), randomBlock(bs), Buffer.alloc(bs), Buffer.alloc(bs), randomBlock(bs)]
  blocks.push(blocks[0]!)
  const tail = randomBlock(100)
  const file = path.join(dir, 'img')
  await fs.writeFile(file, Buffer.concat([...blocks, tail]))
  const hasher = new BlockHasher(2)
  t.teardown(() => hasher.close())
  const m = await hasher.indexFile(file, { blockSize: bs })
  t.equal(m.size, bs * 6 + 100)
  t.equal(m.hashes.length, 7 * 32)
  t.equal(zeroBlockCount(m), 2)
  t.ok(isZeroSlot(m.hashes, 2) && isZeroSlot(m.hashes, 3))
  t.same(blockHash(m, 0), hash(blocks[0]!))
  t.same(blockHash(m, 5), blockHash(m, 0), 'repeated block, same hash')
  t.same(blockHash(m, 6), hash(tail), 'short last block hashed by its length')
  t.equal(blockLength(m, 6), 100)
  const enc = encodeManifest(m)
  t.equal(enc.length, 17 + 1 + 5 * 32, 'zero blocks carry no hash in the encoding')
  const back = decodeManifest(enc, m.root)
  t.same(back.hashes, m.hashes)
  t.same(back.root, m.root)
})

t.test('a tampered manifest is refused', async t => {
  const hashes = Buffer.concat([hash(Buffer.from('a')), Buffer.alloc(32)])
  const enc = encodeManifest({ blockSize: 4096, size: 8192, hashes })
  const root = hash(enc)
  const bad = Buffer.from(enc)
  bad[bad.length - 1] ^= 1
  t.throws(() => decodeManifest(bad, root), { code: 'VERIFY_FAILED' })
  t.throws(() => decodeManifest(enc.subarray(0, enc.length - 1)), { code: 'VERIFY_FAILED' })
  t.throws(() => decodeManifest(Buffer.from('nonsense')), { code: 'VERIFY_FAILED' })
})

function randomBlock (n: number): Buffer {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (Math.random() * 256) | 0
  return b
}
