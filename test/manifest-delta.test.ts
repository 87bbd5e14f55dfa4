// Manifest deltas: version 1 (changed slots with their hashes) and version 2 (runs: zeros,
// copies of the base's slots, hashes), on manifests made from random hash tables.

import t from 'tap'
import crypto from 'node:crypto'
import { HASH_BYTES } from '../daemon/blocks/hash.js'
import { createManifest, encodeManifest, type Manifest } from '../daemon/blocks/manifest.js'
import { applyManifestDelta, encodeManifestDelta } from '../daemon/blocks/manifest-delta.js'

const BS = 4096

function manifestOf (hashes: Buffer): Manifest {
  return createManifest(BS, (hashes.length / HASH_BYTES) * BS, hashes)
}

function slot (hashes: Buffer, i: number): Buffer {
  return hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES)
}

// A base of n random blocks (every 10th zero), and an image built apart from it: the base's
// blocks moved by `shift` slots, n/100 new ones, n/40 zeroed, and `grow` more slots.
function pair (n: number, shift: number, grow = 0): { base: Manifest, next: Manifest } {
  const a = crypto.randomBytes(n * HASH_BYTES)
  for (let i = 0; i < n; i += 10) slot(a, i).fill(0)
  const b = Buffer.alloc((n + grow) * HASH_BYTES)
  a.copy(b, shift * HASH_BYTES, 0, (n - shift) * HASH_BYTES)
  const fresh = Math.floor(n / 10)
  crypto.randomBytes(Math.floor(n / 100) * HASH_BYTES).copy(b, fresh * HASH_BYTES)
  b.fill(0, Math.floor(n / 2) * HASH_BYTES, Math.floor(n / 2 + n / 40) * HASH_BYTES)
  crypto.randomBytes(grow * HASH_BYTES).copy(b, n * HASH_BYTES)
  return { base: manifestOf(a), next: manifestOf(b) }
}

t.test('version 2 names moved blocks by where they lie in the base', async t => {
  const { base, next } = pair(20_000, 7)
  const d2 = encodeManifestDelta(base, next, 2)
  const d1 = encodeManifestDelta(base, next, 1)
  t.ok(applyManifestDelta(base, d2).root.equals(next.root), 'version 2 gives the root')
  t.ok(applyManifestDelta(base, d1).root.equals(next.root), 'version 1 still applies')
  const whole = encodeManifest(next).length
  t.ok(d2.length < whole / 10, `moved blocks cost runs, not hashes: ${d2.length} bytes vs ${whole} for the manifest`)
  t.ok(d1.length > whole, `version 1 sends every moved hash (${d1.length})`)
})

t.test('scattered single changes: the smaller encoding, slots', async t => {
  const base = manifestOf(crypto.randomBytes(1000 * HASH_BYTES))
  const hashes = Buffer.from(base.hashes)
  for (let i = 0; i < 1000; i += 3) crypto.randomBytes(HASH_BYTES).copy(hashes, i * HASH_BYTES)
  const next = manifestOf(hashes)
  const d = encodeManifestDelta(base, next, 2)
  t.equal(d[4], 1, 'version 1: 36 bytes a changed block, where a run of one would take 41')
  t.equal(d.length, encodeManifestDelta(base, next, 1).length)
  t.ok(applyManifestDelta(base, d).root.equals(next.root))
})

t.test('a bigger or smaller image, and one with nothing in common', async t => {
  const grown = pair(5000, 3, 1500)
  t.ok(applyManifestDelta(grown.base, encodeManifestDelta(grown.base, grown.next)).root.equals(grown.next.root), 'grown')
  const shrunk = { base: grown.next, next: manifestOf(Buffer.from(grown.base.hashes.subarray(0, 4000 * HASH_BYTES))) }
  t.ok(applyManifestDelta(shrunk.base, encodeManifestDelta(shrunk.base, shrunk.next)).root.equals(shrunk.next.root), 'shrunk')
  const other = manifestOf(crypto.randomBytes(3000 * HASH_BYTES))
  const d = encodeManifestDelta(grown.base, other)
  t.ok(applyManifestDelta(grown.base, d).root.equals(other.root), 'unrelated: all hashes')
  const same = encodeManifestDelta(grown.base, grown.base)
  t.equal(same.length, 53, 'the same manifest: a header alone')
})

t.test('a malformed delta is refused, never applied in part', async t => {
  const { base, next } = pair(3000, 2)
  const d = encodeManifestDelta(base, next)
  const tamper = (edit: (b: Buffer) => Buffer) => edit(Buffer.from(d))
  const cases: Array<[string, Buffer]> = [
    ['truncated', d.subarray(0, d.length - 1)],
    ['trailing bytes', Buffer.concat([d, Buffer.alloc(1)])],
    ['unknown version', tamper(b => { b[4] = 3; return b })],
    ['another base', tamper(b => { b[5]! ^= 1; return b })],
    ['a run past the end', tamper(b => { b.writeUInt32BE(1 << 30, 53); return b })],
    ['an unknown kind', tamper(b => { b[61] = 9; return b })],
    ['an empty run', tamper(b => { b.writeUInt32BE(0, 57); return b })]
  ]
  for (const [what, bad] of cases) t.throws(() => applyManifestDelta(base, bad), { code: 'VERIFY_FAILED' }, what)
  // Two runs out of order: the second starts before the first.
  const two = encodeManifestDelta(manifestOf(Buffer.alloc(10 * HASH_BYTES)), manifestOf(Buffer.concat([crypto.randomBytes(HASH_BYTES), Buffer.alloc(3 * HASH_BYTES), crypto.randomBytes(HASH_BYTES), Buffer.alloc(5 * HASH_BYTES)])))
  const swapped = Buffer.from(two)
  swapped.writeUInt32BE(8, 53)
  t.throws(() => applyManifestDelta(manifestOf(Buffer.alloc(10 * HASH_BYTES)), swapped), { code: 'VERIFY_FAILED' }, 'runs out of order')
  // A copy run naming slots past the base's end.
  const moved = pair(100, 1)
  const dm = encodeManifestDelta(moved.base, moved.next)
  let o = 53
  while (dm[o + 8] !== 1) o += 9 + (dm[o + 8] === 2 ? dm.readUInt32BE(o + 4) * HASH_BYTES : 0)
  const past = Buffer.from(dm)
  past.writeUInt32BE(99, o + 9)
  t.throws(() => applyManifestDelta(moved.base, past), { code: 'VERIFY_FAILED' }, 'copy past the base')
})
