// A set of block hashes, each mapped to a number (where the block is), for lookups by the
// million: open addressing over typed arrays, keyed by the hash's own bytes (BLAKE3 output is
// uniform), with no string or object per entry. The table stores no hashes: `keyOf(value)`
// says where the full hash of an entry lies, to confirm a match.

const INITIAL_SLOTS = 1 << 16
const MAX_LOAD = 0.5
const EMPTY = -1

export type KeyOf = (value: number) => { buf: Uint8Array, offset: number }

export class HashIndex {
  readonly #keyOf: KeyOf
  #mask = INITIAL_SLOTS - 1
  // value + 1 per slot (0: empty), so a fresh table needs no fill.
  #values = new Float64Array(INITIAL_SLOTS)
  // The hash's second 32-bit word: most mismatches end here without a look at the full hash.
  #tags = new Int32Array(INITIAL_SLOTS)
  #size = 0

  constructor (keyOf: KeyOf) {
    this.#keyOf = keyOf
  }

  get size (): number { return this.#size }

  // The value of the hash at buf[offset..offset+32), or -1.
  get (buf: Uint8Array, offset = 0): number {
    const tag = word(buf, offset + 4)
    for (let s = word(buf, offset) & this.#mask; ; s = (s + 1) & this.#mask) {
      const v = this.#values[s]!
      if (v === 0) return EMPTY
      if (this.#tags[s] === tag && this.#same(v - 1, buf, offset)) return v - 1
    }
  }

  // Adds the hash with `value` unless it is there already; true when added.
  add (buf: Uint8Array, offset: number, value: number): boolean {
    if ((this.#size + 1) > (this.#mask + 1) * MAX_LOAD) this.#grow()
    const tag = word(buf, offset + 4)
    for (let s = word(buf, offset) & this.#mask; ; s = (s + 1) & this.#mask) {
      const v = this.#values[s]!
      if (v === 0) {
        this.#values[s] = value + 1
        this.#tags[s] = tag
        this.#size++
        return true
      }
      if (this.#tags[s] === tag && this.#same(v - 1, buf, offset)) return false
    }
  }

  clear (): void {
    this.#mask = INITIAL_SLOTS - 1
    this.#values = new Float64Array(INITIAL_SLOTS)
    this.#tags = new Int32Array(INITIAL_SLOTS)
    this.#size = 0
  }

  #same (value: number, buf: Uint8Array, offset: number): boolean {
    const k = this.#keyOf(value)
    const b = k.buf
    const o = k.offset
    for (let j = 0; j < 32; j++) if (b[o + j] !== buf[offset + j]) return false
    return true
  }

  #grow (): void {
    const values = this.#values
    const tags = this.#tags
    const slots = values.length * 2
    this.#mask = slots - 1
    this.#values = new Float64Array(slots)
    this.#tags = new Int32Array(slots)
    for (let s = 0; s < values.length; s++) {
      const v = values[s]!
      if (v === 0) continue
      const k = this.#keyOf(v - 1)
      let t = word(k.buf, k.offset) & this.#mask
      while (this.#values[t] !== 0) t = (t + 1) & this.#mask
      this.#values[t] = v
      this.#tags[t] = tags[s]!
    }
  }
}

function word (b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)
}
