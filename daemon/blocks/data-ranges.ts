// The byte ranges a writer put data in, in order, merged across small gaps: an indexer given
// them hashes those ranges alone, and knows every byte outside them is zero.

// Gaps narrower than this are hashed through (their zero blocks are found as such) rather than
// splitting the work into many small pieces.
const MERGE_GAP = 256 << 10

export class DataRanges {
  readonly #ranges: Array<[number, number]> = []

  // A range at or after the last one added.
  add (start: number, end: number): void {
    if (end <= start) return
    const last = this.#ranges.at(-1)
    if (last && start < last[1]) throw new Error(`data range ${start}-${end} goes back before ${last[1]}`)
    if (last && start - last[1] < MERGE_GAP) last[1] = end
    else this.#ranges.push([start, end])
  }

  // The ranges widened to whole blocks (the last may end at `size`, mid-block).
  aligned (blockSize: number, size: number): Array<[number, number]> {
    const out: Array<[number, number]> = []
    for (const [s, e] of this.#ranges) {
      const start = s - (s % blockSize)
      const end = Math.min(size, Math.ceil(e / blockSize) * blockSize)
      const last = out.at(-1)
      if (last && start <= last[1]) last[1] = Math.max(last[1], end)
      else out.push([start, end])
    }
    return out
  }
}
