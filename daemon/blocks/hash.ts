// The one place osfarm hashes: BLAKE3. Everything else imports from this module.
//
// Two implementations with one interface: the native binding (@napi-rs/blake-hash) where it
// loads, else hash-wasm's wasm BLAKE3 (a platform without a published binding, such as a
// linux-arm64 host). OSFARM_BLAKE3=wasm forces the fallback (tests, bench:index); =native makes
// a missing binding an error. `blake3Implementation` says which one this process uses.
//
// Why hex: every Buffer that @napi-rs/blake-hash returns (blake3(), digestBuffer()) leaks about
// 300 bytes of native memory, never reclaimed (docs/measurements.md), while digest('hex')
// leaks nothing and is faster. So digests travel as hex and are written into JS-owned buffers.

import { createRequire } from 'node:module'
import { createBLAKE3, type IHasher } from 'hash-wasm'

export const HASH_BYTES = 32

type Data = Uint8Array | string

// A streaming BLAKE3 hasher, independent of every other.
export interface Blake3 {
  update (data: Data): this
  digest (encoding: 'hex'): string
  reset (): this
}

interface NativeHasher {
  update (data: Buffer | string): unknown
  digest (encoding: 'hex'): string
  reset (): unknown
}

export type Blake3Implementation = 'native' | 'wasm'

function loadNative (): (new () => NativeHasher) | undefined {
  if (process.env.OSFARM_BLAKE3 === 'wasm') return undefined
  try {
    return (createRequire(import.meta.url)('@napi-rs/blake-hash') as { Blake3Hasher: new () => NativeHasher }).Blake3Hasher
  } catch (err) {
    if (process.env.OSFARM_BLAKE3 === 'native') throw err
    return undefined
  }
}

const Native = loadNative()
// The wasm hasher every wasm Blake3 shares: each keeps its own state and loads it to update.
const wasm: IHasher | undefined = Native ? undefined : await createBLAKE3()

export const blake3Implementation: Blake3Implementation = Native ? 'native' : 'wasm'

const asBuffer = (d: Data): Buffer | string => typeof d === 'string' || Buffer.isBuffer(d) ? d : Buffer.from(d.buffer, d.byteOffset, d.byteLength)

class NativeBlake3 implements Blake3 {
  readonly #h = new Native!()
  update (data: Data): this { this.#h.update(asBuffer(data)); return this }
  digest (encoding: 'hex'): string { return this.#h.digest(encoding) }
  reset (): this { this.#h.reset(); return this }
}

const EMPTY_STATE = wasm?.init().save()

class WasmBlake3 implements Blake3 {
  #state = EMPTY_STATE!
  update (data: Data): this { this.#state = wasm!.load(this.#state).update(data).save(); return this }
  digest (encoding: 'hex'): string { return wasm!.load(this.#state).digest(encoding) }
  reset (): this { this.#state = EMPTY_STATE!; return this }
}

export function createHasher (): Blake3 {
  return Native ? new NativeBlake3() : new WasmBlake3()
}

// The one-shot digest of `data`, as hex.
const hexOf: (data: Uint8Array) => string = Native
  ? (() => { const h = new Native(); return (data: Uint8Array) => { h.reset(); h.update(asBuffer(data)); return h.digest('hex') } })()
  : (data: Uint8Array) => wasm!.init().update(data).digest('hex')

// Writes BLAKE3(data) into `out` at `offset`, allocating nothing native.
export function hashInto (data: Uint8Array, out: Buffer, offset: number): void {
  out.write(hexOf(data), offset, HASH_BYTES, 'hex')
}

export function hash (data: Uint8Array): Buffer {
  return Buffer.from(hexOf(data), 'hex')
}

// Hash of several parts in order, without concatenating them first.
export function hashParts (parts: Iterable<Uint8Array | string>): Buffer {
  const h = createHasher()
  for (const p of parts) h.update(p)
  return Buffer.from(h.digest('hex'), 'hex')
}

// The hasher's class, as @napi-rs/blake-hash names it (new Blake3Hasher(), update, digest).
export const Blake3Hasher: new () => Blake3 = Native ? NativeBlake3 : WasmBlake3

export function toHex (h: Uint8Array): string {
  return Buffer.from(h.buffer, h.byteOffset, h.byteLength).toString('hex')
}
