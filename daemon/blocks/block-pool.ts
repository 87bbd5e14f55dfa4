// Block work off the main thread, which carries the peer sessions' crypto and framing: a few
// worker threads (block-worker.ts) pack block responses with zstd for sending, unpack received
// ones and check every block against the hash it was asked by. One pool per process, started
// on first use; idle workers do not keep the process alive. Payloads move between threads
// without copies where they can.

import os from 'node:os'
import { Worker } from 'node:worker_threads'
import { IO_ERROR } from '../../protocol/errors.js'
import type { BlockReply, BlockTarget, BlockTask, ReadRun } from './block-worker.js'

const MAX_THREADS = 4
// Tasks given to one worker at a time (the next is queued there while it works on one).
const PER_WORKER = 2

type TaskBody = BlockTask extends infer T ? T extends BlockTask ? Omit<T, 'id'> : never : never

interface Slot {
  worker: Worker
  busy: number
}

interface Queued {
  task: TaskBody
  transfer: ArrayBuffer[]
  resolve: (r: BlockReply) => void
  reject: (err: Error) => void
}

export interface Packed { data: Buffer, compressed: boolean, packMs: number }

export class BlockPool {
  readonly threads: number
  #slots: Slot[] = []
  #pending = new Map<number, { slot: Slot, q: Queued }>()
  #queue: Queued[] = []
  #nextId = 1

  constructor (threads = Math.max(1, Math.min(MAX_THREADS, os.availableParallelism()))) {
    this.threads = threads
  }

  // Packs `data` (raw blocks) at zstd `level`: compressed when that saves at least `minSaving`
  // of it, else `data` as it was. `movable`: data is an unpooled buffer the caller gives up.
  // `packMs`: the time compressing took on the worker.
  async pack (data: Buffer, level: number, minSaving: number, movable = false): Promise<Packed> {
    const input = movable ? data : copyOut(data)
    const r = await this.#run({ op: 'pack', data: input, level, minSaving }, [input.buffer as ArrayBuffer])
    return { data: asBuffer(r.data!), compressed: !!r.compressed, packMs: r.packMs ?? 0 }
  }

  // Reads `reads` (file ranges, in order) on a worker and packs them as pack() does; level 0
  // leaves them raw. Throws IO_ERROR when a range cannot be read.
  async packFrom (reads: ReadRun[], level: number, minSaving: number): Promise<Packed> {
    const r = await this.#run({ op: 'pack', reads, level, minSaving }, [])
    return { data: asBuffer(r.data!), compressed: !!r.compressed, packMs: r.packMs ?? 0 }
  }

  // Unpacks a response payload (zstd or raw) of `raw` bytes and checks block j (sizes[j] bytes,
  // 0: missing) against hash j of `hashes`. Throws on a payload that does not decode to `raw`.
  // `movable`: data's whole buffer is the caller's to give up.
  // `into`: the valid blocks are written there (on the worker) and `data` comes back empty.
  async unpack (zstd: boolean, data: Buffer, raw: number, sizes: number[], hashes: Buffer, movable = false, into?: BlockTarget): Promise<{ data: Buffer, valid: Uint8Array }> {
    const input = movable ? data : copyOut(data)
    const r = await this.#run({ op: 'unpack', zstd, data: input, raw, sizes, hashes, into }, [input.buffer as ArrayBuffer])
    return { data: r.data ? asBuffer(r.data) : Buffer.alloc(0), valid: r.valid! }
  }

  // Starts every worker now (a daemon that will serve or fetch), so the first blocks do not
  // wait for threads to start and load their native modules.
  warm (): void {
    while (this.#slots.length < this.threads) this.#spawn()
  }

  async close (): Promise<void> {
    const slots = this.#slots
    this.#slots = []
    await Promise.all(slots.map(s => s.worker.terminate()))
  }

  #run (task: TaskBody, transfer: ArrayBuffer[]): Promise<BlockReply> {
    return new Promise<BlockReply>((resolve, reject) => {
      this.#queue.push({ task, transfer, resolve, reject })
      this.#dispatch()
    }).then(r => {
      if (r.error) throw r.io ? IO_ERROR(r.error) : new Error(r.error)
      return r
    })
  }

  #dispatch (): void {
    while (this.#queue.length) {
      const slot = this.#free()
      if (!slot) return
      const q = this.#queue.shift()!
      const id = this.#nextId++
      this.#pending.set(id, { slot, q })
      if (slot.busy++ === 0) slot.worker.ref()
      slot.worker.postMessage({ ...q.task, id }, q.transfer)
    }
  }

  // The least busy worker below PER_WORKER tasks; a new one while all are busy and there are
  // fewer than `threads`.
  #free (): Slot | undefined {
    let best: Slot | undefined
    for (const s of this.#slots) if (!best || s.busy < best.busy) best = s
    if (best && (best.busy === 0 || this.#slots.length >= this.threads)) return best.busy < PER_WORKER ? best : undefined
    return this.#spawn()
  }

  #spawn (): Slot {
    const worker = new Worker(new URL('./block-worker.js', import.meta.url), { resourceLimits: { maxYoungGenerationSizeMb: 8 } })
    const slot: Slot = { worker, busy: 0 }
    worker.on('message', (r: BlockReply) => {
      const p = this.#pending.get(r.id)
      if (!p) return
      this.#pending.delete(r.id)
      if (--slot.busy === 0) worker.unref()
      p.q.resolve(r)
      this.#dispatch()
    })
    worker.on('error', err => this.#lost(slot, err))
    worker.on('exit', () => this.#lost(slot, new Error('block worker exited')))
    worker.unref()
    this.#slots.push(slot)
    return slot
  }

  #lost (slot: Slot, err: Error): void {
    this.#slots = this.#slots.filter(s => s !== slot)
    for (const [id, p] of this.#pending) {
      if (p.slot !== slot) continue
      this.#pending.delete(id)
      p.q.reject(err)
    }
  }
}

let shared: BlockPool | undefined

// The process's pool.
export function blockPool (): BlockPool {
  shared ??= new BlockPool()
  return shared
}

// An unpooled copy that may be moved to another thread.
function copyOut (b: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(b.byteLength)
  out.set(b)
  return out
}

function asBuffer (b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}
