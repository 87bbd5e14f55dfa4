// The one place osfarm hashes: BLAKE3 through @napi-rs/blake-hash (native; the npm `blake3`
// package does not install here). Everything else imports from this module.
//
// Why hex: every Buffer that @napi-rs/blake-hash returns (blake3(), digestBuffer()) leaks about
// 300 bytes of native memory, never reclaimed (docs/measurements.md), while
// digest('hex') leaks nothing and is faster. So digests travel as hex and are written into
// JS-owned buffers here.

import { Blake3Hasher } from '@napi-rs/blake-hash'

export const HASH_BYTES = 32

const hasher = new Blake3Hasher()

// Writes BLAKE3(data) into `out` at `offset`, allocating nothing native.
export function hashInto (data: Uint8Array, out: Buffer, offset: number): void {
  hasher.reset()
  hasher.update(data)
  out.write(hasher.digest('hex'), offset, HASH_BYTES, 'hex')
}

export function hash (data: Uint8Array): Buffer {
  hasher.reset()
  hasher.update(data)
  return Buffer.from(hasher.digest('hex'), 'hex')
}

// Hash of several parts in order, without concatenating them first.
export function hashParts (parts: Iterable<Uint8Array | string>): Buffer {
  const h = new Blake3Hasher()
  for (const p of parts) h.update(p)
  return Buffer.from(h.digest('hex'), 'hex')
}

export function toHex (h: Uint8Array): string {
  return Buffer.from(h.buffer, h.byteOffset, h.byteLength).toString('hex')
}
