// Generated raw images with the shapes that matter: random data, repeated blocks, long zero
// runs, and a size that is not a multiple of the block size.

import fs from 'node:fs/promises'
import { randomBytes } from 'node:crypto'

export interface ImageShape {
  blocks: number
  blockSize?: number
  tail?: number
  seed?: number
}

export async function makeImage (file: string, shape: ImageShape): Promise<Buffer> {
  const bs = shape.blockSize ?? 4096
  const repeated = randomBytes(bs)
  const parts: Buffer[] = []
  for (let i = 0; i < shape.blocks; i++) {
    const kind = i % 10
    if (kind < 4) parts.push(randomBytes(bs)) // random data
    else if (kind < 6) parts.push(repeated) // the same block again and again
    else parts.push(Buffer.alloc(bs)) // zero runs (4 blocks of every 10)
  }
  if (shape.tail) parts.push(randomBytes(shape.tail))
  const data = Buffer.concat(parts)
  const fh = await fs.open(file, 'w')
  try {
    // Write only non-zero blocks, so the source is sparse where it is zero.
    for (let o = 0; o < data.length; o += bs) {
      const b = data.subarray(o, o + bs)
      if (b.some(x => x !== 0)) await fh.write(b, 0, b.length, o)
    }
    await fh.truncate(data.length)
  } finally {
    await fh.close()
  }
  return data
}

export async function allocatedBytes (file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512
}
