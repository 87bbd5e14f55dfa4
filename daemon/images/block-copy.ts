// Copies a byte range between files in large chunks, writing only non-zero blocks, so zero
// runs become (or stay) holes in the target. Used by import and raw export.

import type { FileHandle } from 'node:fs/promises'
import { JOB_CANCELLED } from '../../protocol/errors.js'
import { readFully, writeError } from './host-files.js'
import type { DataRanges } from '../blocks/data-ranges.js'

const CHUNK_BYTES = 4 << 20

export interface CopyOptions {
  size: number
  blockSize: number
  signal?: AbortSignal
  onProgress?: (done: number, total: number) => void
  // Named in errors: a source that ends early is SOURCE_CHANGED; a full target filesystem is
  // `full` (STORE_FULL for a store volume, the default NO_SPACE for an export's file).
  source?: string
  target?: string
  full?: 'STORE_FULL' | 'NO_SPACE'
  // Told where data was written.
  ranges?: DataRanges
}

// The target must already be `size` bytes long and read as zeros where nothing is written
// (a new sparse file, or a fresh thin volume).
export async function copyNonZero (from: FileHandle, to: FileHandle, options: CopyOptions): Promise<{ written: number }> {
  const { size, blockSize } = options
  const source = options.source ?? 'the source'
  const target = options.target ?? 'the target'
  const full = options.full ?? 'NO_SPACE'
  const chunk = Buffer.allocUnsafe(CHUNK_BYTES - (CHUNK_BYTES % blockSize))
  const zero = Buffer.alloc(blockSize)
  let written = 0
  for (let pos = 0; pos < size;) {
    if (options.signal?.aborted) throw JOB_CANCELLED()
    const got = Math.min(chunk.length, size - pos)
    await readFully(from, chunk, 0, got, pos, source, size)
    // Write each run of consecutive non-zero blocks with one call.
    let runStart = -1
    for (let o = 0; o < got; o += blockSize) {
      const end = Math.min(o + blockSize, got)
      const nonZero = chunk.compare(zero, 0, end - o, o, end) !== 0
      if (nonZero && runStart < 0) runStart = o
      if (!nonZero && runStart >= 0) {
        await writeAll(to, chunk.subarray(runStart, o), pos + runStart, target, full)
        options.ranges?.add(pos + runStart, pos + o)
        written += o - runStart
        runStart = -1
      }
    }
    if (runStart >= 0) {
      await writeAll(to, chunk.subarray(runStart, got), pos + runStart, target, full)
      options.ranges?.add(pos + runStart, pos + got)
      written += got - runStart
    }
    pos += got
    options.onProgress?.(pos, size)
  }
  return { written }
}

async function writeAll (fh: FileHandle, buf: Buffer, position: number, target: string, full: 'STORE_FULL' | 'NO_SPACE'): Promise<void> {
  let off = 0
  try {
    while (off < buf.length) {
      const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off)
      off += bytesWritten
    }
  } catch (err) {
    throw writeError(err, target, full)
  }
}
