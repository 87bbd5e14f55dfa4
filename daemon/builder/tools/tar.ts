// tar, wrapped once: unpacking a distribution's rootfs tarball (any compression tar detects)
// with owners, modes and extended attributes as they are in the archive. It runs in a sandbox
// where only the target directory is writable: whatever the archive's symlinks point to (an
// `etc -> /etc` member followed by `etc/passwd`), nothing on the host can change.

import path from 'node:path'
import { BUILD_FAILED } from '../../../protocol/errors.js'
import { lastLines } from '../../tools/run.js'
import { readOnlyHostArgv } from '../sandbox/enter-root.js'
import { runTool } from '../sandbox/sandbox.js'

export async function extract (tarball: string, dir: string, signal?: AbortSignal, onLine?: (line: string) => void): Promise<void> {
  const argv = readOnlyHostArgv([dir], ['tar', '-x', '-p', '--numeric-owner', '--xattrs', '--xattrs-include=*', '-f', tarball, '-C', dir])
  const r = await runTool(argv, { workDir: path.dirname(path.dirname(dir)), what: 'unpacking the rootfs tarball', ...(signal ? { signal } : {}), ...(onLine ? { onLine } : {}) })
  if (r.exitCode !== 0) throw BUILD_FAILED(`unpacking ${tarball} failed: ${lastLines(r.tail)}`)
}
