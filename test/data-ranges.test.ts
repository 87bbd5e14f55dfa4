// Indexing only where a writer put data gives the manifest a full read gives: the ranges merge
// across small gaps, widen to whole blocks, and everything outside them is zero.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { DataRanges } from '../daemon/blocks/data-ranges.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { copyNonZero } from '../daemon/images/block-copy.js'
import { makeImage } from '../testing/images.js'

t.test('ranges merge small gaps, keep large ones, widen to blocks and refuse to go back', async t => {
  const r = new DataRanges()
  r.add(100, 200)
  r.add(4096, 8192) // a gap under the merge width: one range
  r.add(10 << 20, (10 << 20) + 10)
  t.same(r.aligned(4096, 1 << 30), [[0, 8192], [10 << 20, (10 << 20) + 4096]])
  t.same(r.aligned(4096, (10 << 20) + 10), [[0, 8192], [10 << 20, (10 << 20) + 10]], 'the last block may end at the size')
  t.throws(() => r.add(0, 10), /goes back/)
})

t.test('an import indexed from its ranges is the manifest of a full read', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-ranges-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const src = path.join(dir, 'src.img')
  const data = await makeImage(src, { blocks: 3000, tail: 123 })
  // Long zero runs too, so some gaps are wider than the merge width.
  await fs.appendFile(src, Buffer.alloc(2 << 20))
  await fs.appendFile(src, Buffer.alloc(4096, 1))
  const size = data.length + (2 << 20) + 4096
  const dst = path.join(dir, 'dst.img')
  await fs.writeFile(dst, '')
  await fs.truncate(dst, size)
  const ranges = new DataRanges()
  const from = await fs.open(src, 'r')
  const to = await fs.open(dst, 'r+')
  await copyNonZero(from, to, { size, blockSize: 4096, ranges })
  await from.close()
  await to.close()
  const h = new BlockHasher(2)
  t.teardown(() => h.close())
  const full = await h.indexFile(dst, { blockSize: 4096 })
  const aligned = ranges.aligned(4096, size)
  t.ok(aligned.length >= 2, `${aligned.length} ranges`)
  const partial = await h.indexFile(dst, { blockSize: 4096, ranges: aligned })
  t.same(partial.root, full.root, 'the same root')
  t.same(partial.hashes, full.hashes)
})
