// The one runner for external tools: execa with a fixed environment, output
// streamed line by line to the build log, and a tail kept so each wrapper can map a failure to
// an error code. A missing binary is TOOL_MISSING, a cancelled run JOB_CANCELLED.

import { execa } from 'execa'
import { JOB_CANCELLED, TOOL_FAILED, TOOL_MISSING } from '../../protocol/errors.js'

const TAIL_LINES = 200

export interface RunOptions {
  env?: Record<string, string>
  // Keep the caller's environment too (default: a clean one, plus env).
  inheritEnv?: boolean
  input?: string | Buffer
  signal?: AbortSignal
  onLine?: (line: string) => void
  // The Debian package that provides the tool, for TOOL_MISSING's message.
  pkg?: string
  timeoutMs?: number
  // After a cancel's SIGTERM, how long the tool gets to clean up before SIGKILL (default 5 s).
  graceMs?: number
}

export interface RunResult {
  exitCode: number
  stdout: string
  // The last lines of stdout and stderr, interleaved as they came.
  tail: string[]
}

export const BASE_ENV: Record<string, string> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LC_ALL: 'C',
  LANG: 'C',
  HOME: '/root'
}

// Runs to the end whatever the exit code; a non-zero exit is the caller's to interpret.
export async function run (cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  if (options.signal?.aborted) throw JOB_CANCELLED()
  const env = options.inheritEnv ? { ...process.env, ...options.env } : { ...BASE_ENV, ...options.env }
  const child = execa(cmd, args, {
    reject: false,
    env,
    extendEnv: false,
    cancelSignal: options.signal,
    forceKillAfterDelay: options.graceMs ?? 5000,
    timeout: options.timeoutMs,
    stdin: options.input === undefined ? 'ignore' : 'pipe',
    input: options.input,
    buffer: { stdout: true, stderr: false },
    stripFinalNewline: false
  })
  const tail: string[] = []
  const collect = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return
    let partial = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop()!
      for (const line of parts) emit(line)
    })
    stream.on('end', () => { if (partial) emit(partial) })
  }
  const emit = (line: string) => {
    tail.push(line)
    if (tail.length > TAIL_LINES) tail.shift()
    options.onLine?.(line)
  }
  collect(child.stdout)
  collect(child.stderr)
  const result = await child
  if (result.isCanceled || options.signal?.aborted) throw JOB_CANCELLED(`${cmd} cancelled`)
  if ((result as { code?: string }).code === 'ENOENT' || (result.failed && /ENOENT/.test(String(result.message)) && result.exitCode === undefined)) {
    throw TOOL_MISSING(`${cmd} is not installed${options.pkg ? ` (apt-get install ${options.pkg})` : ''}`)
  }
  if (result.timedOut) throw TOOL_FAILED(`${cmd} timed out after ${options.timeoutMs} ms`)
  return { exitCode: result.exitCode ?? 128, stdout: String(result.stdout ?? ''), tail }
}

// Runs and throws TOOL_FAILED on a non-zero exit, with the last lines of output.
export async function runOk (cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, options)
  if (r.exitCode !== 0) throw TOOL_FAILED(`${cmd} ${args.slice(0, 2).join(' ')} failed (exit ${r.exitCode}): ${lastLines(r.tail)}`, { tool: cmd, exitCode: r.exitCode })
  return r
}

export function lastLines (tail: string[], n = 5): string {
  return tail.filter(l => l.trim()).slice(-n).join(' | ')
}
