// The fetch's target volume: writes at block offsets, and the resume point. Blocks are marked
// in the progress bitfield once written; a flush syncs the target and then saves a copy of the
// bits taken before the sync, so a restart resumes from blocks that are on disk.

import fs from 'node:fs/promises'
import type { Progress } from './progress.js'

export class TargetWriter {
  readonly #path: string
  readonly #progress: Progress
  readonly #onFlush: ((bits: Buffer) => void) | undefined
  #fh!: fs.FileHandle
  #dirty = false
  #sinceFlush = 0
  #flushing: Promise<void> = Promise.resolve()

  constructor (path: string, progress: Progress, onFlush?: (bits: Buffer) => void) {
    this.#path = path
    this.#progress = progress
    this.#onFlush = onFlush
  }

  get path (): string { return this.#path }

  async open (): Promise<void> {
    this.#fh = await fs.open(this.#path, 'r+')
  }

  // Waits for a flush under way, then closes the file.
  async close (): Promise<void> {
    await this.#flushing
    await this.#fh.close()
  }

  // Block i is written (and final).
  mark (i: number): void {
    this.#progress.set(i)
    this.#dirty = true
  }

  // Counts bytes written: true once `limit` were written since the last flush (the count
  // then restarts), for the caller to flush.
  wrote (bytes: number, limit: number): boolean {
    this.#sinceFlush += bytes
    if (this.#sinceFlush < limit) return false
    this.#sinceFlush = 0
    return true
  }

  // One flush at a time; a call during a flush waits for it and then flushes again if needed.
  flush (): Promise<void> {
    const run = async () => {
      if (!this.#dirty) return
      this.#dirty = false
      this.#sinceFlush = 0
      const snapshot = Buffer.from(this.#progress.bits)
      await this.#fh.datasync()
      await this.#progress.save(snapshot)
      this.#onFlush?.(snapshot)
    }
    const next = this.#flushing.then(run, run)
    this.#flushing = next.catch(() => {})
    return next
  }

  // Writes [offset, buffer] pairs, one writev per contiguous run.
  async writeRuns (writes: Array<[number, Buffer]>): Promise<void> {
    writes.sort((a, b) => a[0] - b[0])
    const runs: Array<Promise<void>> = []
    for (let k = 0; k < writes.length;) {
      const pos = writes[k]![0]
      const bufs = [writes[k]![1]]
      let end = pos + writes[k]![1].length
      let n = 1
      while (k + n < writes.length && writes[k + n]![0] === end && bufs.length < 1024) {
        bufs.push(writes[k + n]![1])
        end += writes[k + n]![1].length
        n++
      }
      runs.push(this.#writev(bufs, pos, end - pos))
      k += n
    }
    await Promise.all(runs)
  }

  async writeAll (buf: Buffer, pos: number): Promise<void> {
    let off = 0
    while (off < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, off, buf.length - off, pos + off)
      off += bytesWritten
    }
  }

  async #writev (bufs: Buffer[], pos: number, len: number): Promise<void> {
    const { bytesWritten } = await this.#fh.writev(bufs, pos)
    if (bytesWritten === len) return
    // Short write (rare): finish it plainly.
    await this.writeAll(Buffer.concat(bufs).subarray(bytesWritten), pos + bytesWritten)
  }
}
