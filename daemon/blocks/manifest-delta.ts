// A manifest as a delta against another one the receiver already holds. A pre-stage sync or a
// new version of an image moves a few thousand slots instead of the whole hash table (16 MiB
// for a full 2 GiB disk); an image built apart from one the receiver holds names most of its
// blocks by where they lie in that one (runs of 4 bytes, not 32 bytes a block). The result is
// always checked against the wanted root, so a delta is trusted no more than a manifest.
//
// Header: "OSFD" | u8 version | base root (32) | u32 blockSize | u64 size | u32 count.
// Version 1: count × (u32 slot | 32-byte hash, all zeros for a zero block): the slots that
//   differ from the base at the same index.
// Version 2: count runs, in slot order, each u32 first slot | u32 length | u8 kind, then by kind:
//   ZERO (zero blocks; nothing), COPY (u32 first slot of the base: the base's hashes from there),
//   HASHES (length × 32 bytes). Slots no run covers are the base's at the same index (zero past
//   its end). Big-endian integers.

import { HASH_BYTES } from './hash.js'
import { blockCount, createManifest, hashWords, zeroSlots, type Manifest } from './manifest.js'
import { HashIndex } from './hash-index.js'
import { VERIFY_FAILED } from '../../protocol/errors.js'

const MAGIC = Buffer.from('OSFD')
export type DeltaVersion = 1 | 2
const HEADER_BYTES = 4 + 1 + 32 + 4 + 8 + 4
const ENTRY_BYTES = 4 + HASH_BYTES
const RUN_BYTES = 4 + 4 + 1
const ZERO = 0
const COPY = 1
const HASHES = 2

// Slot indices where `next` differs from `base` (slots past base's end count as zero blocks).
export function changedSlots (base: Manifest, next: Manifest): number[] {
  const count = blockCount(next.size, next.blockSize)
  const baseCount = base.blockSize === next.blockSize ? blockCount(base.size, base.blockSize) : 0
  const out: number[] = []
  const a = hashWords(next.hashes)
  const b = hashWords(base.hashes)
  for (let i = 0; i < count; i++) {
    let differs = 0
    for (let w = i * 8, end = w + 8; w < end; w++) differs |= i < baseCount ? a[w]! ^ b[w]! : a[w]!
    if (differs) out.push(i)
  }
  return out
}

function header (base: Manifest, next: Manifest, version: DeltaVersion, count: number, bodyBytes: number): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + bodyBytes)
  MAGIC.copy(out, 0)
  out.writeUInt8(version, 4)
  base.root.copy(out, 5)
  out.writeUInt32BE(next.blockSize, 37)
  out.writeBigUInt64BE(BigInt(next.size), 41)
  out.writeUInt32BE(count, 49)
  return out
}

// `version` 2: the receiver reads both, and gets the smaller (scattered single blocks cost 41
// bytes each as runs, 36 as slots).
export function encodeManifestDelta (base: Manifest, next: Manifest, version: DeltaVersion = 2): Buffer {
  const slots = changedSlots(base, next)
  const runs = version === 2 ? encodeRuns(base, next, slots) : undefined
  if (runs && runs.length <= HEADER_BYTES + slots.length * ENTRY_BYTES) return runs
  const out = header(base, next, 1, slots.length, slots.length * ENTRY_BYTES)
  let o = HEADER_BYTES
  for (const i of slots) {
    out.writeUInt32BE(i, o)
    next.hashes.copy(out, o + 4, i * HASH_BYTES, (i + 1) * HASH_BYTES)
    o += ENTRY_BYTES
  }
  return out
}

function encodeRuns (base: Manifest, next: Manifest, slots: number[]): Buffer {
  // Where each of the base's hashes lies (its first slot), for the changed slots to point at.
  const baseCount = base.blockSize === next.blockSize ? blockCount(base.size, base.blockSize) : 0
  const baseZero = zeroSlots(base.hashes)
  const where = new HashIndex(j => ({ buf: base.hashes, offset: j * HASH_BYTES }))
  for (let j = 0; j < baseCount; j++) if (!baseZero[j]) where.add(base.hashes, j * HASH_BYTES, j)
  const zero = zeroSlots(next.hashes)
  const runs: Array<{ first: number, length: number, kind: number, from: number }> = []
  let bytes = 0
  for (const i of slots) {
    const last = runs[runs.length - 1]
    const follows = last !== undefined && last.first + last.length === i
    if (zero[i]) {
      if (follows && last.kind === ZERO) { last.length++; continue }
      runs.push({ first: i, length: 1, kind: ZERO, from: 0 })
      bytes += RUN_BYTES
      continue
    }
    // The base's next slot continues a copy run when it holds this hash too.
    if (follows && last.kind === COPY) {
      const j = last.from + last.length
      if (j < baseCount && base.hashes.compare(next.hashes, i * HASH_BYTES, (i + 1) * HASH_BYTES, j * HASH_BYTES, (j + 1) * HASH_BYTES) === 0) { last.length++; continue }
    }
    const j = baseCount ? where.get(next.hashes, i * HASH_BYTES) : -1
    if (j >= 0) {
      runs.push({ first: i, length: 1, kind: COPY, from: j })
      bytes += RUN_BYTES + 4
    } else if (follows && last.kind === HASHES) {
      last.length++
      bytes += HASH_BYTES
    } else {
      runs.push({ first: i, length: 1, kind: HASHES, from: 0 })
      bytes += RUN_BYTES + HASH_BYTES
    }
  }
  const out = header(base, next, 2, runs.length, bytes)
  let o = HEADER_BYTES
  for (const r of runs) {
    out.writeUInt32BE(r.first, o)
    out.writeUInt32BE(r.length, o + 4)
    out.writeUInt8(r.kind, o + 8)
    o += RUN_BYTES
    if (r.kind === COPY) {
      out.writeUInt32BE(r.from, o)
      o += 4
    } else if (r.kind === HASHES) {
      o += next.hashes.copy(out, o, r.first * HASH_BYTES, (r.first + r.length) * HASH_BYTES)
    }
  }
  return out
}

// Applies a delta to the manifest it was made against; the caller checks the result's root.
export function applyManifestDelta (base: Manifest, data: Buffer): Manifest {
  const bad = (why: string) => VERIFY_FAILED(`malformed manifest delta: ${why}`)
  if (data.length < HEADER_BYTES || !data.subarray(0, 4).equals(MAGIC)) throw bad('no header')
  const version = data.readUInt8(4)
  if (version !== 1 && version !== 2) throw bad(`unknown version ${version}`)
  if (!data.subarray(5, 37).equals(base.root)) throw bad('made against another base')
  const blockSize = data.readUInt32BE(37)
  const size64 = data.readBigUInt64BE(41)
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('size out of range')
  const size = Number(size64)
  const n = data.readUInt32BE(49)
  if (blockSize !== base.blockSize) throw bad('block size differs from the base')
  const count = blockCount(size, blockSize)
  const baseCount = blockCount(base.size, base.blockSize)
  const hashes = Buffer.alloc(count * HASH_BYTES)
  base.hashes.copy(hashes, 0, 0, Math.min(base.hashes.length, hashes.length))
  let next = 0
  let o = HEADER_BYTES
  for (let k = 0; k < n; k++) {
    if (version === 1) {
      if (o + ENTRY_BYTES > data.length) throw bad('length')
      const i = data.readUInt32BE(o)
      if (i >= count || i < next) throw bad('slot out of order or range')
      next = i + 1
      data.copy(hashes, i * HASH_BYTES, o + 4, o + ENTRY_BYTES)
      o += ENTRY_BYTES
      continue
    }
    if (o + RUN_BYTES > data.length) throw bad('length')
    const first = data.readUInt32BE(o)
    const length = data.readUInt32BE(o + 4)
    const kind = data.readUInt8(o + 8)
    o += RUN_BYTES
    if (first < next || length === 0 || first + length > count) throw bad('run out of order or range')
    next = first + length
    const at = first * HASH_BYTES
    if (kind === ZERO) {
      hashes.fill(0, at, at + length * HASH_BYTES)
    } else if (kind === COPY) {
      if (o + 4 > data.length) throw bad('length')
      const from = data.readUInt32BE(o)
      o += 4
      if (from + length > baseCount) throw bad('copy past the base\'s end')
      base.hashes.copy(hashes, at, from * HASH_BYTES, (from + length) * HASH_BYTES)
    } else if (kind === HASHES) {
      if (o + length * HASH_BYTES > data.length) throw bad('length')
      o += data.copy(hashes, at, o, o + length * HASH_BYTES)
    } else {
      throw bad(`unknown run kind ${kind}`)
    }
  }
  if (o !== data.length) throw bad('length')
  return createManifest(blockSize, size, hashes)
}
