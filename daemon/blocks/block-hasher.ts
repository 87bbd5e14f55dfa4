// Indexes a volume into a manifest on a pool of worker threads. The file is cut into segments
// that workers take in turn; each worker reads its segment itself (no bytes cross threads), so
// memory stays at a few MiB per worker whatever the image size.

import os from 'node:os'
import fs from 'node:fs/promises'
import { Worker } from 'node:worker_threads'
import { createManifest, blockCount, checkBlockSize, DEFAULT_BLOCK_SIZE, type Manifest } from './manifest.js'
import { IO_ERROR, JOB_CANCELLED, SOURCE_CHANGED } from '../../protocol/errors.js'
import type { HashReply, HashTask } from './hash-worker.js'

const HASH_BYTES = 32
const SEGMENT_BYTES = 64 << 20

export interface IndexOptions {
  blockSize?: number
  // Bytes to index; defaults to the file's (or block device's) size.
  size?: number
  // Where the data is (block-aligned, in order): only these are read; the rest is zero.
  ranges?: Array<[number, number]>
  signal?: AbortSignal
  onProgress?: (bytesDone: number, bytesTotal: number) => void
}

interface Pending {
  resolve: () => void
  reject: (err: Error) => void
}

export class BlockHasher {
  readonly threads: number
  #workers: Worker[] = []
  #idle: Worker[] = []
  #waiting: Array<(w: Worker) => void> = []
  #pending = new Map<number, Pending>()
  #nextId = 0

  constructor (threads = Math.max(1, os.availableParallelism())) {
    this.threads = threads
  }

  start (): void {
    if (this.#workers.length) return
    for (let i = 0; i < this.threads; i++) {
      // A small young generation: the hash loop makes only short-lived garbage, and each
      // worker's heap would otherwise grow by tens of MiB while indexing.
      const w = new Worker(new URL('./hash-worker.js', import.meta.url), { resourceLimits: { maxYoungGenerationSizeMb: 2 } })
      w.on('message', (reply: HashReply) => {
        const p = this.#pending.get(reply.id)
        this.#pending.delete(reply.id)
        this.#release(w)
        if (!p) return
        // A volume shorter than its size changed while it was indexed.
        if (reply.error) p.reject(reply.error.code === 'ESHORT' ? SOURCE_CHANGED(`indexing: ${reply.error.message}`) : IO_ERROR(`reading for the index failed: ${reply.error.message}`))
        else p.resolve()
      })
      w.on('error', err => {
        for (const p of this.#pending.values()) p.reject(err)
        this.#pending.clear()
      })
      w.unref()
      this.#workers.push(w)
      this.#idle.push(w)
    }
  }

  // An idle worker must not keep the process alive; a busy one must.
  #release (w: Worker): void {
    w.unref()
    const next = this.#waiting.shift()
    if (next) next(w)
    else this.#idle.push(w)
  }

  #acquire (): Promise<Worker> {
    const w = this.#idle.pop()
    if (w) return Promise.resolve(w)
    return new Promise(resolve => this.#waiting.push(resolve))
  }

  async #run (task: Omit<HashTask, 'id'>): Promise<void> {
    const w = await this.#acquire()
    const id = this.#nextId++
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      w.ref()
      w.postMessage({ ...task, id })
    })
  }

  async indexFile (path: string, options: IndexOptions = {}): Promise<Manifest> {
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE
    checkBlockSize(blockSize)
    const size = options.size ?? await deviceSize(path)
    this.start()
    // Workers write their slots straight into this table (it becomes the manifest's), so no
    // per-segment buffers cross threads or wait for collection.
    const hashes = Buffer.from(new SharedArrayBuffer(blockCount(size, blockSize) * HASH_BYTES))
    const segment = Math.max(blockSize, SEGMENT_BYTES - (SEGMENT_BYTES % blockSize))
    const pieces: Array<[number, number]> = []
    for (const [from, to] of options.ranges ?? [[0, size]]) {
      for (let start = from; start < Math.min(to, size); start += segment) pieces.push([start, Math.min(to, size, start + segment)])
    }
    const total = pieces.reduce((n, [s, e]) => n + e - s, 0)
    let done = 0
    const jobs: Promise<void>[] = []
    let failure: Error | undefined
    for (const [start, end] of pieces) {
      if (failure) break
      if (options.signal?.aborted) throw JOB_CANCELLED()
      // Keep at most `threads` segments queued so cancellation and errors stop work quickly.
      if (jobs.length >= this.threads * 2) await Promise.race(jobs)
      const job: Promise<void> = this.#run({ path, table: hashes.buffer as SharedArrayBuffer, blockSize, start, end }).then(() => {
        done += end - start
        options.onProgress?.(done, total)
      }, err => { failure ??= err }).finally(() => { jobs.splice(jobs.indexOf(job), 1) })
      jobs.push(job)
    }
    await Promise.all(jobs)
    if (failure) throw failure
    if (options.signal?.aborted) throw JOB_CANCELLED()
    return createManifest(blockSize, size, hashes)
  }

  async close (): Promise<void> {
    const workers = this.#workers
    this.#workers = []
    this.#idle = []
    await Promise.all(workers.map(w => w.terminate()))
  }
}

// Size of a regular file, or of a block device (whose stat size is 0) from sysfs, found by its
// device number: without udev, /dev/mapper/* are plain nodes, not links to dm-N.
export async function deviceSize (path: string): Promise<number> {
  const st = await fs.stat(path, { bigint: true })
  if (st.isFile()) return Number(st.size)
  if (!st.isBlockDevice()) throw IO_ERROR(`${path} is neither a file nor a block device`)
  const major = ((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn)
  const minor = (st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn)
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim())
  return sectors * 512
}
