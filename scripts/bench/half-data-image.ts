// The benches' standard image: every other 1 MiB region holds random data, and within a data
// region one 4 KiB block in 32 is zero: about 48% non-zero, in runs as a filesystem lays them.

import fs from 'node:fs/promises'
import { randomBytes } from 'node:crypto'

// Writes the image (sparse where it is zero) and returns its non-zero bytes.
export async function makeHalfDataImage (file: string, size: number): Promise<number> {
  const fh = await fs.open(file, 'w')
  const region = 1 << 20
  let nonZero = 0
  try {
    for (let pos = 0; pos < size; pos += region) {
      if ((pos / region) % 2 === 1) continue
      const buf = randomBytes(region)
      for (let o = 0; o < region; o += 32 * 4096) buf.fill(0, o, o + 4096)
      await fh.write(buf, 0, region, pos)
      nonZero += region * 31 / 32
    }
    await fh.truncate(size)
  } finally {
    await fh.close()
  }
  return nonZero
}
