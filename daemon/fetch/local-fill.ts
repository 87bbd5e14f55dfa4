// The local half of a fetch: zero blocks over the parent's data, holes dug for long runs of
// them, and blocks copied from other local volumes (cloned where the filesystem shares
// extents, read and written where it refuses).

import fs from 'node:fs/promises'
import { execa } from 'execa'
import { blockLength, type Manifest } from '../blocks/manifest.js'
import { IO_ERROR } from '../../protocol/errors.js'
import { cloneRanges } from '../tools/xfs-io.js'
import type { FetchPlan } from './fetch-planner.js'
import type { TargetWriter } from './target-writer.js'

const LOCAL_BATCH_BLOCKS = 256
// Contiguous runs cloned per xfs_io call (progress and cancellation are checked between).
const CLONE_BATCH_RUNS = 8192
const MIN_PUNCH_BLOCKS = 16
const MAX_PUNCH_CALLS = 64

export interface LocalFillOptions {
  manifest: Manifest
  plan: FetchPlan
  writer: TargetWriter
  signal?: AbortSignal
  // The fetch failed elsewhere: stop between batches.
  failed: () => boolean
  // Blocks copied into place (cloned: no bytes moved).
  onCopied: (indices: number[], cloned: boolean) => void
}

export class LocalFill {
  readonly #o: LocalFillOptions
  readonly #m: Manifest

  constructor (options: LocalFillOptions) {
    this.#o = options
    this.#m = options.manifest
  }

  // Zeros where the parent snapshot has data; each block is marked once written.
  async zeroOverParent (): Promise<void> {
    const bs = this.#m.blockSize
    const zero = Buffer.alloc(bs * 64)
    const list = this.#o.plan.zeroOverParent
    for (let k = 0; k < list.length;) {
      let n = 1
      while (k + n < list.length && n < 64 && list[k + n] === list[k]! + n) n++
      const start = list[k]!
      const len = Math.min(n * bs, this.#m.size - start * bs)
      await this.#o.writer.writeAll(zero.subarray(0, len), start * bs)
      for (let j = 0; j < n; j++) this.#o.writer.mark(start + j)
      k += n
    }
  }

  // Zeros already read as zeros; punching gives long runs' space back. (Not `fallocate
  // --dig-holes` with a range: util-linux 2.38 punched the block after the range here.)
  async digHoles (): Promise<void> {
    const list = this.#o.plan.zeroOverParent
    const bs = this.#m.blockSize
    let calls = 0
    for (let k = 0; k < list.length && calls < MAX_PUNCH_CALLS;) {
      let n = 1
      while (k + n < list.length && list[k + n] === list[k]! + n) n++
      if (n >= MIN_PUNCH_BLOCKS) {
        const offset = list[k]! * bs
        const length = Math.min(n * bs, this.#m.size - offset)
        await execa('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), this.#o.writer.path], { reject: false })
        calls++
      }
      k += n
    }
  }

  // Runs contiguous in both the source and the target are cloned (shared extents, no bytes
  // moved) where the filesystem can; what it refuses is read and written.
  async copyLocal (): Promise<void> {
    const list = [...this.#o.plan.local].sort((a, b) => a.from.path < b.from.path ? -1 : a.from.path > b.from.path ? 1 : a.from.index - b.from.index)
    if (!list.length) return
    const bs = this.#m.blockSize
    const runs: Array<{ k: number, n: number }> = []
    for (let k = 0; k < list.length;) {
      let n = 1
      while (k + n < list.length && list[k + n]!.from.path === list[k]!.from.path && list[k + n]!.from.index === list[k]!.from.index + n && list[k + n]!.index === list[k]!.index + n) n++
      runs.push({ k, n })
      k += n
    }
    const copy: typeof list = []
    let cloning = true
    for (let r = 0; r < runs.length; r += CLONE_BATCH_RUNS) {
      if (this.#stopped()) return
      const part = runs.slice(r, r + CLONE_BATCH_RUNS)
      // A short last block cannot be cloned (ranges are whole filesystem blocks).
      const ranges = part.filter(({ k, n }) => cloning && blockLength(this.#m, list[k + n - 1]!.index) === bs && list[k + n - 1]!.from.length === bs)
        .map(({ k, n }) => ({ src: list[k]!.from.path, srcOffset: list[k]!.from.index * bs, dstOffset: list[k]!.index * bs, length: n * bs }))
      const cloned = ranges.length ? await cloneRanges(this.#o.writer.path, ranges, this.#o.signal) : new Set<number>()
      if (!cloned.size) cloning = false
      const done: number[] = []
      for (const { k, n } of part) {
        const wasCloned = cloned.has(list[k]!.index * bs)
        for (let j = k; j < k + n; j++) {
          if (wasCloned) done.push(list[j]!.index)
          else copy.push(list[j]!)
        }
      }
      if (done.length) this.#o.onCopied(done, true)
    }
    await this.#copyBytes(copy)
  }

  #stopped (): boolean {
    return this.#o.failed() || !!this.#o.signal?.aborted
  }

  async #copyBytes (list: FetchPlan['local']): Promise<void> {
    const handles = new Map<string, fs.FileHandle>()
    const bs = this.#m.blockSize
    try {
      for (let k = 0; k < list.length; k += LOCAL_BATCH_BLOCKS) {
        if (this.#stopped()) return
        const part = list.slice(k, k + LOCAL_BATCH_BLOCKS)
        const buf = Buffer.allocUnsafe(part.length * bs)
        // Reads: one per run contiguous in the source.
        const reads: Array<Promise<void>> = []
        for (let j = 0; j < part.length;) {
          let n = 1
          while (j + n < part.length && part[j + n]!.from.path === part[j]!.from.path && part[j + n]!.from.index === part[j]!.from.index + n) n++
          const first = part[j]!.from
          const len = (n - 1) * bs + part[j + n - 1]!.from.length
          const at = j * bs
          reads.push((async () => {
            let fh = handles.get(first.path)
            if (!fh) { fh = await fs.open(first.path, 'r'); handles.set(first.path, fh) }
            let got = 0
            while (got < len) {
              const { bytesRead } = await fh.read(buf, at + got, len - got, first.index * bs + got)
              if (!bytesRead) throw IO_ERROR(`short read from ${first.path}`)
              got += bytesRead
            }
          })())
          j += n
        }
        await Promise.all(reads)
        const writes: Array<[number, Buffer]> = part.map((c, j) => [c.index * bs, buf.subarray(j * bs, j * bs + blockLength(this.#m, c.index))])
        await this.#o.writer.writeRuns(writes)
        this.#o.onCopied(part.map(c => c.index), false)
      }
    } finally {
      for (const fh of handles.values()) await fh.close().catch(() => {})
    }
  }
}
