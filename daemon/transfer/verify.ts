// The end-of-fetch check: every non-zero block of the target is read back and hashed against
// the manifest, in large reads. Zero blocks are zero by construction (holes of a new volume,
// zeros written over parent data, or zero in the verified parent), so their holes are not read:
// the whole-file hash would spend most of its time reading zeros.

import fs from 'node:fs/promises'
import { hash, HASH_BYTES } from '../blocks/hash.js'
import { blockCount, blockLength, isZeroSlot, type Manifest } from '../blocks/manifest.js'
import { JOB_CANCELLED } from '../../protocol/errors.js'

const CHUNK_BYTES = 8 << 20

// `only` (a bitfield), when given, limits the check to those blocks: a fetch onto a snapshot of
// a verified volume checks only what it wrote (pre-staging's cut-over).
export async function verifyBlocks (file: string, m: Manifest, options: { signal?: AbortSignal, onProgress?: (done: number, total: number) => void, only?: Uint8Array } = {}): Promise<number[]> {
  const count = blockCount(m.size, m.blockSize)
  const per = Math.max(1, Math.floor(CHUNK_BYTES / m.blockSize))
  const bad: number[] = []
  const fh = await fs.open(file, 'r')
  const bufs = [Buffer.allocUnsafe(per * m.blockSize), Buffer.allocUnsafe(per * m.blockSize)]
  try {
    // Runs of consecutive non-zero blocks, cut at `per` blocks; the next run is read while this
    // one is hashed.
    const runs: Array<[number, number]> = []
    const only = options.only
    const skip = (i: number) => isZeroSlot(m.hashes, i) || (!!only && !(only[i >> 3]! & (1 << (i & 7))))
    for (let i = 0; i < count;) {
      if (skip(i)) { i++; continue }
      let n = 1
      while (i + n < count && n < per && !skip(i + n)) n++
      runs.push([i, n])
      i += n
    }
    const read = async (k: number): Promise<number> => {
      const [first, n] = runs[k]!
      const len = (n - 1) * m.blockSize + blockLength(m, first + n - 1)
      const buf = bufs[k & 1]!
      let got = 0
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, first * m.blockSize + got)
        if (!bytesRead) break
        got += bytesRead
      }
      return got
    }
    let pending = runs.length ? read(0) : undefined
    for (let k = 0; k < runs.length; k++) {
      if (options.signal?.aborted) throw JOB_CANCELLED()
      const got = await pending!
      pending = k + 1 < runs.length ? read(k + 1) : undefined
      const [first, n] = runs[k]!
      const buf = bufs[k & 1]!
      for (let j = 0; j < n; j++) {
        const i = first + j
        const len = blockLength(m, i)
        const o = j * m.blockSize
        if (o + len > got || !hash(buf.subarray(o, o + len)).equals(m.hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES))) bad.push(i)
      }
      options.onProgress?.((first + n) * m.blockSize, m.size)
    }
    await pending
  } finally {
    await fh.close()
  }
  return bad
}
