// The fetch's check of the whole image: every non-zero block of the target hashed against the
// manifest, each once. A received block is hashed by the worker that unpacks it, from the very
// buffer it then writes, so it is not read back; the others (the snapshot's, local copies and
// clones, what a resumed fetch wrote before) are read back and hashed on the block pool's
// workers (as background work) as soon as they are in place and final, so the check left at the
// end is the last few blocks. Zero blocks are zero by construction (holes of a new volume,
// zeros written over parent data, or zero in the verified parent), so their holes are not read.

import { HASH_BYTES } from '../blocks/hash.js'
import { zeroSlots, type Manifest } from '../blocks/manifest.js'
import { JOB_CANCELLED } from '../../protocol/errors.js'
import type { BlockPool } from '../blocks/block-pool.js'

// Blocks per check task: large reads, and enough tasks at the end to keep every worker busy.
const TASK_BLOCKS = 2048
// Blocks given to add() are checked once this many wait, or this long after the first.
const ADD_DELAY_MS = 100

// add() the blocks that are in place (a snapshot's at once, the others as they are written);
// finish() checks every non-zero block not yet checked and returns those that do not match.
export class Verifier {
  readonly #file: string
  readonly #m: Manifest
  readonly #pool: BlockPool
  // 1: queued or checked; 2: not to be checked.
  readonly #seen: Uint8Array
  readonly #zero: Uint8Array
  #queue: number[] = []
  #timer: NodeJS.Timeout | undefined
  #tasks = new Set<Promise<void>>()
  #bad: number[] = []
  #failure: Error | undefined
  #checked = 0

  // `only` (a bitfield), when given, limits the check to those blocks: a fetch onto a snapshot
  // of a verified volume checks only what it wrote (pre-staging's cut-over).
  constructor (file: string, m: Manifest, pool: BlockPool, only?: Uint8Array) {
    this.#file = file
    this.#m = m
    this.#pool = pool
    this.#zero = zeroSlots(m.hashes)
    this.#seen = new Uint8Array(this.#zero.length)
    // Blocks outside `only` count as checked already.
    if (only) for (let i = 0; i < this.#seen.length; i++) if (!(only[i >> 3]! & (1 << (i & 7)))) this.#seen[i] = 2
  }

  // Blocks now in place and final: check them soon.
  add (indices: Iterable<number>): void {
    for (const i of indices) {
      if (this.#seen[i] || this.#zero[i]) continue
      this.#seen[i] = 1
      this.#queue.push(i)
    }
    if (this.#queue.length >= TASK_BLOCKS) this.#flush()
    else if (this.#queue.length) this.#timer ??= setTimeout(() => this.#flush(), ADD_DELAY_MS)
  }

  // Blocks hashed before they were written (received): checked already.
  hashed (indices: Iterable<number>): void {
    for (const i of indices) this.#seen[i] = 2
  }

  // Checks the rest and waits for every check; the indices that do not match, ascending.
  async finish (options: { signal?: AbortSignal, onProgress?: (done: number, total: number) => void } = {}): Promise<number[]> {
    let total = 0
    for (let i = 0; i < this.#seen.length; i++) {
      if (this.#zero[i] || this.#seen[i] === 2) continue
      total++
      if (this.#seen[i]) continue
      this.#seen[i] = 1
      this.#queue.push(i)
      if (this.#queue.length >= TASK_BLOCKS) this.#flush()
    }
    this.#flush()
    while (this.#tasks.size) {
      if (options.signal?.aborted) throw JOB_CANCELLED()
      await Promise.race(this.#tasks)
      options.onProgress?.(this.#checked, total)
    }
    if (this.#failure) throw this.#failure
    return this.#bad.sort((a, b) => a - b)
  }

  // Stops checking (the fetch failed): pending checks are dropped.
  close (): void {
    clearTimeout(this.#timer)
    this.#queue = []
  }

  #flush (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const list = this.#queue.sort((a, b) => a - b)
    this.#queue = []
    for (let k = 0; k < list.length; k += TASK_BLOCKS) this.#check(list.slice(k, k + TASK_BLOCKS))
  }

  #check (list: number[]): void {
    const runs: number[] = []
    for (let k = 0; k < list.length;) {
      let n = 1
      while (k + n < list.length && list[k + n] === list[k]! + n) n++
      runs.push(list[k]!, n)
      k += n
    }
    const hashes = Buffer.allocUnsafe(list.length * HASH_BYTES)
    for (let j = 0; j < list.length; j++) this.#m.hashes.copy(hashes, j * HASH_BYTES, list[j]! * HASH_BYTES, (list[j]! + 1) * HASH_BYTES)
    const task: Promise<void> = this.#pool.verify(this.#file, this.#m.blockSize, this.#m.size, Uint32Array.from(runs), hashes).then(bad => {
      this.#bad.push(...bad)
      this.#checked += list.length
    }, err => { this.#failure ??= err }).finally(() => { this.#tasks.delete(task) })
    this.#tasks.add(task)
  }
}
