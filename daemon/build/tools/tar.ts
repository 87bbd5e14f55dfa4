// tar, wrapped once: unpacking a distribution's rootfs tarball (any compression tar detects)
// with owners, modes and extended attributes as they are in the archive.

import { BUILD_FAILED } from '../../../protocol/errors.js'
import { run, lastLines } from '../../tools/run.js'

export async function extract (tarball: string, dir: string, signal?: AbortSignal, onLine?: (line: string) => void): Promise<void> {
  const r = await run('tar', ['-x', '-p', '--numeric-owner', '--xattrs', '--xattrs-include=*', '-f', tarball, '-C', dir], { signal, onLine, pkg: 'tar' })
  if (r.exitCode !== 0) throw BUILD_FAILED(`unpacking ${tarball} failed: ${lastLines(r.tail)}`)
}
