// The fetch planner: where each block of a wanted manifest comes from (the snapshot parent in
// place, a hole, another local volume, or peers), on hand-made manifests.

import t from 'tap'
import { HASH_BYTES } from '../daemon/blocks/hash.js'
import type { Manifest } from '../daemon/blocks/manifest.js'
import { chooseParent, planFetch } from '../daemon/fetch/fetch-planner.js'
import type { Location } from '../daemon/blocks/local-blocks.js'

const BS = 4096

// A manifest of blocks named by letter: '.' is a zero block; equal letters, equal hashes.
function manifest (blocks: string, blockSize = BS): Manifest {
  const hashes = Buffer.alloc(blocks.length * HASH_BYTES)
  for (let i = 0; i < blocks.length; i++) if (blocks[i] !== '.') hashes.fill(blocks.charCodeAt(i), i * HASH_BYTES, (i + 1) * HASH_BYTES)
  return { blockSize, size: blocks.length * blockSize, hashes, root: Buffer.alloc(32) }
}

const nowhere = () => undefined

t.test('with nothing local, every distinct hash is one remote entry with all its indices', async t => {
  const plan = planFetch(manifest('ab.a.c'), undefined, nowhere)
  t.same(plan.remote.map(e => e.indices), [[0, 3], [1], [5]])
  t.equal(plan.remoteBlocks, 4)
  t.equal(plan.zeroBlocks, 2)
  t.same(plan.zeroOverParent, [], 'zero blocks of a fresh target are holes already')
  t.same(plan.inPlace, [])
  t.same(plan.local, [])
})

t.test('a parent gives its same-offset blocks; zero blocks over its data must be cleared', async t => {
  const parent = { volume: 'p', manifest: manifest('axcd') }
  const plan = planFetch(manifest('ab.dq'), parent, nowhere)
  t.equal(plan.parent, 'p')
  t.same(plan.inPlace, [0, 3])
  t.same(plan.zeroOverParent, [2], 'block 2 is zero here and data in the parent')
  t.same(plan.remote.map(e => e.indices), [[1], [4]], 'block 4 lies past the parent\'s end')
})

t.test('blocks found in another local volume are copied, not fetched', async t => {
  const want = manifest('abcb')
  const seen: number[] = []
  const locate = (hashes: Buffer, offset: number): Location | undefined => {
    seen.push(offset)
    return hashes[offset] === 'b'.charCodeAt(0) ? { volume: 'v', path: '/v', index: 7, length: BS } : undefined
  }
  const plan = planFetch(want, undefined, locate)
  t.same(plan.local, [{ index: 1, from: { volume: 'v', path: '/v', index: 7, length: BS } }, { index: 3, from: { volume: 'v', path: '/v', index: 7, length: BS } }])
  t.same(plan.remote.map(e => e.indices), [[0], [2]])
  t.same(seen, [0, 1, 2, 3].map(i => i * HASH_BYTES), 'asked where each non-zero block is, by its offset in the manifest')
})

t.test('a resume skips what is done; every zero block not done is one to clear', async t => {
  const want = manifest('ab..cd')
  const done = Buffer.from([0b00000101]) // blocks 0 and 2
  const plan = planFetch(want, undefined, nowhere, done)
  t.same(plan.remote.map(e => e.indices), [[1], [4], [5]])
  t.same(plan.zeroOverParent, [3])
  t.equal(plan.zeroBlocks, 2)
})

t.test('the parent is the candidate with the most same-offset matches', async t => {
  const want = manifest('abcd')
  t.equal(chooseParent(want, [{ volume: 'one', manifest: manifest('aqqq') }, { volume: 'two', manifest: manifest('abqq') }])?.volume, 'two')
  t.equal(chooseParent(want, [{ volume: 'none', manifest: manifest('qqqq') }]), undefined, 'no match: no parent')
  t.equal(chooseParent(want, [{ volume: 'other size', manifest: manifest('abcd', 2 * BS) }]), undefined, 'another block size never matches')
  t.equal(chooseParent(manifest('a..d'), [{ volume: 'zeros', manifest: manifest('....') }]), undefined, 'zero blocks do not count as matches')
})

t.test('many distinct hashes: one entry each, found again by hash', async t => {
  const n = 200_000
  const hashes = Buffer.alloc(n * HASH_BYTES)
  for (let i = 0; i < n; i++) hashes.writeUInt32LE(i + 1, i * HASH_BYTES)
  // The last block repeats the first.
  hashes.copy(hashes, (n - 1) * HASH_BYTES, 0, HASH_BYTES)
  const plan = planFetch({ blockSize: BS, size: n * BS, hashes, root: Buffer.alloc(32) }, undefined, nowhere)
  t.equal(plan.remote.length, n - 1)
  t.same(plan.remote[0]!.indices, [0, n - 1])
  t.equal(plan.remoteBlocks, n)
})
