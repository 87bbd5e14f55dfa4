// chroot, wrapped once: a command run inside an image's root with a clean environment. On
// cancel, everything running in that root is killed too: a child a script left in the
// background would otherwise hold the output pipes (and the mount) open.

import { killRootedIn } from './mount.js'
import { run, type RunResult } from '../../tools/run.js'

export interface ChrootOptions {
  env?: Record<string, string>
  input?: string
  signal?: AbortSignal
  onLine?: (line: string) => void
}

export async function chroot (root: string, argv: string[], options: ChrootOptions = {}): Promise<RunResult> {
  const onAbort = () => { void killRootedIn(root) }
  options.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    return await run('chroot', [root, ...argv], { env: options.env, input: options.input, signal: options.signal, onLine: options.onLine, pkg: 'coreutils' })
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
  }
}
