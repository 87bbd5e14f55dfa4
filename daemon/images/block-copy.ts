// Copies a byte range between files in large chunks, writing only non-zero blocks, so zero
// runs become (or stay) holes in the target. Used by import and raw export.

import type { FileHandle } from 'node:fs/promises'
import { JOB_CANCELLED } from '../../protocol/errors.js'

const CHUNK_BYTES = 4 << 20

export interface CopyOptions {
  size: number
  blockSize: number
  signal?: AbortSignal
  onProgress?: (done: number, total: number) => void
}

// The target must already be `size` bytes long and read as zeros where nothing is written
// (a new sparse file, or a fresh thin volume).
export async function copyNonZero (from: FileHandle, to: FileHandle, options: CopyOptions): Promise<{ written: number }> {
  const { size, blockSize } = options
  const chunk = Buffer.allocUnsafe(CHUNK_BYTES - (CHUNK_BYTES % blockSize))
  const zero = Buffer.alloc(blockSize)
  let written = 0
  for (let pos = 0; pos < size;) {
    if (options.signal?.aborted) throw JOB_CANCELLED()
    const want = Math.min(chunk.length, size - pos)
    let got = 0
    while (got < want) {
      const { bytesRead } = await from.read(chunk, got, want - got, pos + got)
      if (bytesRead === 0) throw new Error(`source ended at byte ${pos + got} of ${size}`)
      got += bytesRead
    }
    // Write each run of consecutive non-zero blocks with one call.
    let runStart = -1
    for (let o = 0; o < got; o += blockSize) {
      const end = Math.min(o + blockSize, got)
      const nonZero = chunk.compare(zero, 0, end - o, o, end) !== 0
      if (nonZero && runStart < 0) runStart = o
      if (!nonZero && runStart >= 0) {
        await writeAll(to, chunk.subarray(runStart, o), pos + runStart)
        written += o - runStart
        runStart = -1
      }
    }
    if (runStart >= 0) {
      await writeAll(to, chunk.subarray(runStart, got), pos + runStart)
      written += got - runStart
    }
    pos += got
    options.onProgress?.(pos, size)
  }
  return { written }
}

async function writeAll (fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off)
    off += bytesWritten
  }
}
