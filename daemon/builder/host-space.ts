// Whether a build failed for want of room on the host rather than in the image: a write the
// host filesystem refuses shows inside a step as ENOSPC, an I/O error or a corrupt scratch
// filesystem, so any failure is checked against the host's free space before its scratch goes.

import fs from 'node:fs/promises'
import { STORE_FULL, type OsfarmError } from '../../protocol/errors.js'

// The first of `dirs` whose filesystem is (nearly) full, as root sees it (reserved blocks included).
export async function hostFull (dirs: string[]): Promise<{ path: string, free: number } | undefined> {
  for (const dir of dirs) {
    const st = await fs.statfs(dir).catch(() => undefined)
    if (!st) continue
    const free = st.bfree * st.bsize
    if (free < Math.min(16 << 20, st.blocks * st.bsize / 20)) return { path: dir, free }
  }
  return undefined
}

export function hostFullError (what: string, full: { path: string, free: number }): OsfarmError {
  return STORE_FULL(`${what} ran out of space because the host filesystem of ${full.path} is full (${Math.floor(full.free / 2 ** 20)} MiB free), not the image: free space there`, { path: full.path })
}
