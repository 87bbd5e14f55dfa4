// A manifest as a delta against another one the receiver already holds: only the hash slots
// that differ. A pre-stage sync or a new version of an image moves a few thousand slots instead
// of the whole hash table (16 MiB for a full 2 GiB disk). The result is always checked against
// the wanted root, so a delta is trusted no more than a manifest.
//
// Encoding: "OSFD" | u8 version | base root (32) | u32 blockSize | u64 size | u32 count |
// count × (u32 index | 32-byte hash, all zeros for a zero block). Big-endian integers.

import { HASH_BYTES } from './hash.js'
import { blockCount, createManifest, type Manifest } from './manifest.js'
import { VERIFY_FAILED } from '../../protocol/errors.js'

const MAGIC = Buffer.from('OSFD')
const VERSION = 1
const HEADER_BYTES = 4 + 1 + 32 + 4 + 8 + 4
const ENTRY_BYTES = 4 + HASH_BYTES

// Slot indices where `next` differs from `base` (slots past base's end count as zero blocks).
export function changedSlots (base: Manifest, next: Manifest): number[] {
  const count = blockCount(next.size, next.blockSize)
  const baseCount = base.blockSize === next.blockSize ? blockCount(base.size, base.blockSize) : 0
  const out: number[] = []
  const zero = Buffer.alloc(HASH_BYTES)
  for (let i = 0; i < count; i++) {
    const o = i * HASH_BYTES
    const same = i < baseCount
      ? next.hashes.compare(base.hashes, o, o + HASH_BYTES, o, o + HASH_BYTES) === 0
      : next.hashes.compare(zero, 0, HASH_BYTES, o, o + HASH_BYTES) === 0
    if (!same) out.push(i)
  }
  return out
}

export function encodeManifestDelta (base: Manifest, next: Manifest): Buffer {
  const slots = changedSlots(base, next)
  const out = Buffer.allocUnsafe(HEADER_BYTES + slots.length * ENTRY_BYTES)
  MAGIC.copy(out, 0)
  out.writeUInt8(VERSION, 4)
  base.root.copy(out, 5)
  out.writeUInt32BE(next.blockSize, 37)
  out.writeBigUInt64BE(BigInt(next.size), 41)
  out.writeUInt32BE(slots.length, 49)
  let o = HEADER_BYTES
  for (const i of slots) {
    out.writeUInt32BE(i, o)
    next.hashes.copy(out, o + 4, i * HASH_BYTES, (i + 1) * HASH_BYTES)
    o += ENTRY_BYTES
  }
  return out
}

// Applies a delta to the manifest it was made against; the caller checks the result's root.
export function applyManifestDelta (base: Manifest, data: Buffer): Manifest {
  const bad = (why: string) => VERIFY_FAILED(`malformed manifest delta: ${why}`)
  if (data.length < HEADER_BYTES || !data.subarray(0, 4).equals(MAGIC)) throw bad('no header')
  if (data.readUInt8(4) !== VERSION) throw bad(`unknown version ${data.readUInt8(4)}`)
  if (!data.subarray(5, 37).equals(base.root)) throw bad('made against another base')
  const blockSize = data.readUInt32BE(37)
  const size64 = data.readBigUInt64BE(41)
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('size out of range')
  const size = Number(size64)
  const n = data.readUInt32BE(49)
  if (data.length !== HEADER_BYTES + n * ENTRY_BYTES) throw bad('length')
  if (blockSize !== base.blockSize) throw bad('block size differs from the base')
  const count = blockCount(size, blockSize)
  const hashes = Buffer.alloc(count * HASH_BYTES)
  base.hashes.copy(hashes, 0, 0, Math.min(base.hashes.length, hashes.length))
  let last = -1
  for (let k = 0, o = HEADER_BYTES; k < n; k++, o += ENTRY_BYTES) {
    const i = data.readUInt32BE(o)
    if (i >= count || i <= last) throw bad('slot out of order or range')
    last = i
    data.copy(hashes, i * HASH_BYTES, o + 4, o + ENTRY_BYTES)
  }
  return createManifest(blockSize, size, hashes)
}
