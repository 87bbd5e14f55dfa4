// A fetch's persisted progress: one bit per block, set once the block is verified, written and
// synced to the target. Saved atomically (temp file, fsync, rename), so a restart resumes from it.

import fs from 'node:fs/promises'

export class Progress {
  readonly path: string
  readonly bits: Buffer
  readonly count: number

  private constructor (path: string, bits: Buffer, count: number) {
    this.path = path
    this.bits = bits
    this.count = count
  }

  static async open (path: string, count: number): Promise<Progress> {
    const size = Math.ceil(count / 8)
    const saved = await fs.readFile(path).catch(() => undefined)
    const bits = saved && saved.length === size ? saved : Buffer.alloc(size)
    return new Progress(path, bits, count)
  }

  has (i: number): boolean {
    return (this.bits[i >> 3]! & (1 << (i & 7))) !== 0
  }

  set (i: number): void {
    this.bits[i >> 3]! |= 1 << (i & 7)
  }

  countSet (): number {
    let n = 0
    for (let i = 0; i < this.count; i++) if (this.has(i)) n++
    return n
  }

  // Saves a snapshot taken by the caller before it synced the target.
  async save (snapshot: Buffer = this.bits): Promise<void> {
    const tmp = `${this.path}.tmp`
    const fh = await fs.open(tmp, 'w', 0o600)
    try {
      await fh.writeFile(snapshot)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await fs.rename(tmp, this.path)
  }
}
