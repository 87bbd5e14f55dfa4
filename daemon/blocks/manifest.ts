// A manifest is an image's block index: block size, byte size and one BLAKE3 hash per block,
// with zero blocks marked (their hash slot is all zeros; they are never hashed, sent or
// written). Its root, BLAKE3 of the canonical encoding, is the image's content identity.
//
// Canonical encoding: "OSFM" | u8 version | u32 blockSize | u64 size | zero bitfield (one bit per
// block, LSB first) | the hashes of the non-zero blocks in order. Big-endian integers.

import { hash, HASH_BYTES, toHex } from './hash.js'
import { BAD_PARAMS, VERIFY_FAILED } from '../../protocol/errors.js'

import { checkBlockSize } from '../../protocol/config.js'

export { checkBlockSize, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../../protocol/config.js'

const MAGIC = Buffer.from('OSFM')
const VERSION = 1
const HEADER_BYTES = 4 + 1 + 4 + 8

export interface Manifest {
  blockSize: number
  size: number
  // blockCount(size, blockSize) × 32 bytes; an all-zero slot marks a zero block.
  hashes: Buffer
  root: Buffer
  // The canonical encoding, kept from when the root was computed.
  encoded?: Buffer
}

export function blockCount (size: number, blockSize: number): number {
  return Math.ceil(size / blockSize)
}

export function blockHash (m: Pick<Manifest, 'hashes'>, i: number): Buffer {
  return m.hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES)
}

export function isZeroSlot (hashes: Buffer, i: number): boolean {
  const o = i * HASH_BYTES
  for (let j = o; j < o + HASH_BYTES; j++) if (hashes[j] !== 0) return false
  return true
}

const zeroMaps = new WeakMap<Buffer, Uint8Array>()

// One byte per block, 1 for a zero block: for loops over every slot of a big image. Computed
// once per hash table (a table is never changed once it belongs to a manifest).
export function zeroSlots (hashes: Buffer): Uint8Array {
  let map = zeroMaps.get(hashes)
  if (map) return map
  const count = hashes.length / HASH_BYTES
  map = new Uint8Array(count)
  const w = hashWords(hashes)
  for (let i = 0, o = 0; i < count; i++, o += 8) {
    map[i] = (w[o]! | w[o + 1]! | w[o + 2]! | w[o + 3]! | w[o + 4]! | w[o + 5]! | w[o + 6]! | w[o + 7]!) === 0 ? 1 : 0
  }
  zeroMaps.set(hashes, map)
  return map
}

// A hash table as 32-bit words, 8 a slot (a copy where it is not 4-byte aligned): loops over
// every slot compare words, not bytes or Buffer.compare calls.
export function hashWords (hashes: Buffer): Int32Array {
  const b = hashes.byteOffset % 4 === 0 ? hashes : Buffer.from(hashes)
  return new Int32Array(b.buffer, b.byteOffset, b.length / 4)
}

// Block i of two hash tables holds the same hash.
export function sameSlot (a: Buffer, b: Buffer, i: number): boolean {
  const o = i * HASH_BYTES
  for (let j = o; j < o + HASH_BYTES; j++) if (a[j] !== b[j]) return false
  return true
}

export function zeroBlockCount (m: Pick<Manifest, 'hashes'>): number {
  let n = 0
  for (const z of zeroSlots(m.hashes)) n += z
  return n
}

// The byte length of block i (the last block may be short).
export function blockLength (m: Pick<Manifest, 'size' | 'blockSize'>, i: number): number {
  return Math.min(m.blockSize, m.size - i * m.blockSize)
}

export function createManifest (blockSize: number, size: number, hashes: Buffer): Manifest {
  checkBlockSize(blockSize)
  if (hashes.length !== blockCount(size, blockSize) * HASH_BYTES) throw BAD_PARAMS('hash table does not match the size')
  const encoded = encodeManifest({ blockSize, size, hashes })
  return { blockSize, size, hashes, root: hash(encoded), encoded }
}

export function encodeManifest (m: Pick<Manifest, 'blockSize' | 'size' | 'hashes' | 'encoded'>): Buffer {
  if (m.encoded) return m.encoded
  const count = blockCount(m.size, m.blockSize)
  const bitfield = Buffer.alloc(Math.ceil(count / 8))
  const zero = zeroSlots(m.hashes)
  let nonZero = 0
  for (let i = 0; i < count; i++) {
    if (zero[i]) bitfield[i >> 3] |= 1 << (i & 7)
    else nonZero++
  }
  const out = Buffer.allocUnsafe(HEADER_BYTES + bitfield.length + nonZero * HASH_BYTES)
  MAGIC.copy(out, 0)
  out.writeUInt8(VERSION, 4)
  out.writeUInt32BE(m.blockSize, 5)
  out.writeBigUInt64BE(BigInt(m.size), 9)
  bitfield.copy(out, HEADER_BYTES)
  let o = HEADER_BYTES + bitfield.length
  for (let i = 0; i < count; i++) {
    if (bitfield[i >> 3] & (1 << (i & 7))) continue
    m.hashes.copy(out, o, i * HASH_BYTES, (i + 1) * HASH_BYTES)
    o += HASH_BYTES
  }
  return out
}

// Decodes and checks an encoding; with `expectedRoot`, refuses one whose hash differs.
export function decodeManifest (data: Buffer, expectedRoot?: Uint8Array): Manifest {
  const bad = (why: string) => VERIFY_FAILED(`malformed manifest: ${why}`)
  if (data.length < HEADER_BYTES || !data.subarray(0, 4).equals(MAGIC)) throw bad('no header')
  if (data.readUInt8(4) !== VERSION) throw bad(`unknown version ${data.readUInt8(4)}`)
  const blockSize = data.readUInt32BE(5)
  const size64 = data.readBigUInt64BE(9)
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('size out of range')
  const size = Number(size64)
  try { checkBlockSize(blockSize) } catch { throw bad(`block size ${blockSize}`) }
  const count = blockCount(size, blockSize)
  const bitfield = data.subarray(HEADER_BYTES, HEADER_BYTES + Math.ceil(count / 8))
  if (bitfield.length !== Math.ceil(count / 8)) throw bad('truncated zero map')
  const hashes = Buffer.alloc(count * HASH_BYTES)
  let o = HEADER_BYTES + bitfield.length
  for (let i = 0; i < count; i++) {
    if (bitfield[i >> 3] & (1 << (i & 7))) continue
    if (o + HASH_BYTES > data.length) throw bad('truncated hash table')
    data.copy(hashes, i * HASH_BYTES, o, o + HASH_BYTES)
    if (isZeroSlot(hashes, i)) throw bad(`block ${i} has an all-zero hash`)
    o += HASH_BYTES
  }
  if (o !== data.length) throw bad('trailing bytes')
  const root = hash(data)
  if (expectedRoot && !root.equals(Buffer.from(expectedRoot))) {
    throw VERIFY_FAILED(`manifest root ${toHex(root)} is not the expected ${toHex(expectedRoot)}`)
  }
  return { blockSize, size, hashes, root, encoded: data }
}
