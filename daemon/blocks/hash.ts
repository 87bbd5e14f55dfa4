// The one place osfarm hashes: BLAKE3 through @napi-rs/blake-hash (native; the npm `blake3`
// package does not install here). Everything else imports from this module.

import { blake3, Blake3Hasher } from '@napi-rs/blake-hash'

export const HASH_BYTES = 32

export function hash (data: Uint8Array): Buffer {
  return blake3(data)
}

// Hash of several parts in order, without concatenating them first.
export function hashParts (parts: Iterable<Uint8Array | string>): Buffer {
  const h = new Blake3Hasher()
  for (const p of parts) h.update(p)
  return h.digestBuffer()
}

export function toHex (h: Uint8Array): string {
  return Buffer.from(h.buffer, h.byteOffset, h.byteLength).toString('hex')
}
