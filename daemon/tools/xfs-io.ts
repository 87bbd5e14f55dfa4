// xfs_io (xfsprogs) for what Node's fs cannot do: clone byte ranges of one file into another
// (FICLONERANGE), so a local copy shares extents instead of reading and writing the bytes. Works
// on any filesystem with reflink (XFS, btrfs); elsewhere every range is refused and the caller
// copies.

import { run } from './run.js'

// Ranges per xfs_io run: one -c argument each, well under the argument-size limit.
const MAX_RANGES_PER_RUN = 8192
// xfs_io splits a command on white space; such paths cannot be passed.
const UNSAFE_PATH = /[\s'"\\]/

export interface CloneRange {
  src: string
  srcOffset: number
  dstOffset: number
  length: number
}

// Clones each range into `target` (at dstOffset) and returns the dstOffsets that were cloned;
// the rest (no reflink here, misaligned, another filesystem, no xfs_io) are for the caller to
// copy. xfs_io goes on after a refused clone and exits 0, so success is read from its "linked"
// lines, whatever the exit code.
export async function cloneRanges (target: string, ranges: CloneRange[], signal?: AbortSignal): Promise<Set<number>> {
  const done = new Set<number>()
  if (UNSAFE_PATH.test(target)) return done
  const usable = ranges.filter(r => !UNSAFE_PATH.test(r.src) && r.length > 0)
  for (let k = 0; k < usable.length; k += MAX_RANGES_PER_RUN) {
    const args: string[] = []
    for (const r of usable.slice(k, k + MAX_RANGES_PER_RUN)) args.push('-c', `reflink ${r.src} ${r.srcOffset} ${r.dstOffset} ${r.length}`)
    let stdout: string
    try {
      ({ stdout } = await run('xfs_io', [...args, target], { signal, pkg: 'xfsprogs' }))
    } catch (err) {
      if ((err as { code?: string }).code === 'JOB_CANCELLED') throw err
      // No xfs_io here: the caller copies.
      return done
    }
    for (const m of stdout.matchAll(/^linked (\d+)\/(\d+) bytes at offset (\d+)$/gm)) {
      if (m[1] === m[2]) done.add(Number(m[3]))
    }
    // Nothing linked in a whole run: this filesystem does not share extents; stop asking.
    if (!done.size) return done
  }
  return done
}
