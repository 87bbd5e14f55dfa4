// chroot, wrapped once: a command run inside an image's root with a clean environment.

import { run, type RunResult } from './run.js'

export interface ChrootOptions {
  env?: Record<string, string>
  input?: string
  signal?: AbortSignal
  onLine?: (line: string) => void
}

export async function chroot (root: string, argv: string[], options: ChrootOptions = {}): Promise<RunResult> {
  return run('chroot', [root, ...argv], { env: options.env, input: options.input, signal: options.signal, onLine: options.onLine, pkg: 'coreutils' })
}
