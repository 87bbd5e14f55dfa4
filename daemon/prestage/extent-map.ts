// Where two files may differ, from their extent maps alone (FIEMAP, through `filefrag`): the
// file-store counterpart of thin_delta. Two reflink copies of one disk share every extent the
// disk did not write between them, so a byte range that maps to the same physical place in both
// reads the same; everything else (different places, a hole against data, an extent whose place
// is unknown or encoded) is reported. A superset, never a miss, as long as both files exist.

import { runOk } from '../tools/run.js'

const SECTOR = 512
const UNKNOWN_FLAGS = ['unknown_loc', 'delalloc', 'encoded', 'inline', 'data_inline', 'not_aligned']

export interface Extent {
  // Byte offsets and length.
  logical: number
  physical: number
  length: number
  // Its place cannot be compared (not yet allocated, compressed, inline).
  unknown: boolean
}

export async function readExtents (file: string, signal?: AbortSignal): Promise<Extent[]> {
  const { stdout } = await runOk('filefrag', ['-v', `-b${SECTOR}`, file], { signal, pkg: 'e2fsprogs', timeoutMs: 120_000 })
  return parseFilefrag(stdout)
}

// `filefrag -v -b512` lines: "  ext: logical_start.. logical_end: physical_start.. physical_end: length: [expected:] flags".
export function parseFilefrag (text: string): Extent[] {
  const out: Extent[] = []
  for (const line of text.split('\n')) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):(.*)$/.exec(line)
    if (!m) continue
    const start = Number(m[1])
    const length = Number(m[5])
    const flags = m[6]!
    out.push({ logical: start * SECTOR, physical: Number(m[3]) * SECTOR, length: length * SECTOR, unknown: UNKNOWN_FLAGS.some(f => flags.includes(f)) })
  }
  return out.sort((a, b) => a.logical - b.logical)
}

// Byte ranges [start, length] of [0, size) where `a` and `b` may read differently, merged and
// rounded out to `blockSize`.
export function differingRanges (a: Extent[], b: Extent[], size: number, blockSize: number): Array<[number, number]> {
  const cuts = new Set<number>([0, size])
  for (const e of [...a, ...b]) {
    if (e.logical < size) cuts.add(e.logical)
    if (e.logical + e.length < size) cuts.add(e.logical + e.length)
  }
  const points = [...cuts].sort((x, y) => x - y)
  const out: Array<[number, number]> = []
  let ia = 0
  let ib = 0
  for (let k = 0; k + 1 < points.length; k++) {
    const lo = points[k]!
    const hi = points[k + 1]!
    while (ia < a.length && a[ia]!.logical + a[ia]!.length <= lo) ia++
    while (ib < b.length && b[ib]!.logical + b[ib]!.length <= lo) ib++
    const ea = a[ia] && a[ia]!.logical <= lo ? a[ia] : undefined
    const eb = b[ib] && b[ib]!.logical <= lo ? b[ib] : undefined
    const same = (!ea && !eb) || (!!ea && !!eb && !ea.unknown && !eb.unknown && ea.physical - ea.logical === eb.physical - eb.logical)
    if (same) continue
    const start = Math.floor(lo / blockSize) * blockSize
    const end = Math.min(size, Math.ceil(hi / blockSize) * blockSize)
    const last = out[out.length - 1]
    if (last && last[0] + last[1] >= start) last[1] = Math.max(last[1], end - last[0])
    else out.push([start, end - start])
  }
  return out
}
