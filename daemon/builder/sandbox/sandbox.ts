// The daemon's side of a step sandbox. Every step that touches an image's root (packages,
// files, scripts, boot) and every base tool (mmdebstrap with its hooks, tar for a rootfs
// tarball) runs as a child in a mount namespace and PID namespace of its own:
//
//   sh (joins the step's cgroup) → setpriv --pdeathsig KILL → unshare -m -p --fork
//     --kill-child --mount-proc → the step: sandbox-init.js (node) or the tool
//
// Every mount the step makes (its volume, /proc, /sys, /dev, apt's cache, a tool's chroot
// mounts) lives in that namespace only, and so does every process: when the step's first
// process dies — it ends, it is killed on cancel or timeout, or osfarmd itself dies (kill -9:
// the parent-death signal reaches unshare, and --kill-child the step) — the kernel kills
// the rest and takes the mounts down; a loop device mount -o loop attached clears itself.
// Nothing is left on the host to clean up, and nothing the image contains is resolved
// against the host's tree (see enter-root.ts, in-root.ts).

import { AsyncLocalStorage } from 'node:async_hooks'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { BUILD_FAILED, JOB_CANCELLED, OsfarmError, isErrorCode } from '../../../protocol/errors.js'
import { BASE_ENV, lastLines } from '../../tools/run.js'
import { StepCgroup, type StepLimits } from './cgroup.js'

const TAIL_LINES = 200
// After a kill, how long the namespace's processes may take to be gone.
const GONE_WAIT_MS = 10_000

const INIT = fileURLToPath(new URL('./sandbox-init.js', import.meta.url))

// Joins each cgroup named (by its cgroup.procs file), then becomes the sandbox.
const JOIN = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"'
const UNSHARE = ['unshare', '--mount', '--pid', '--fork', '--kill-child=SIGKILL', '--mount-proc', '--propagation', 'private', '--']

export interface Limits extends StepLimits {
  // A step's wall-clock limit; 0: none.
  timeoutMs: number
}

export interface SandboxOptions {
  env?: Record<string, string>
  input?: string
  signal?: AbortSignal
  limits: Limits
  // The build dir: names the step's cgroup.
  workDir: string
  // What the step is, for the time-limit message.
  what: string
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void
}

export interface SandboxResult {
  exitCode: number
  // The last lines of stdout and stderr, interleaved as they came.
  tail: string[]
  // Processes the kernel killed for going over the memory limit.
  oomKills: number
}

export function limitError (what: string, limits: Limits, kind: 'time' | 'memory'): OsfarmError {
  if (kind === 'time') return BUILD_FAILED(`${what} went over its time limit of ${Math.round(limits.timeoutMs / 1000)} s and was stopped (buildStepTimeoutSeconds)`, { limit: 'time', seconds: limits.timeoutMs / 1000 })
  return BUILD_FAILED(`${what} went over its memory limit and was killed (buildStepMemoryBytes)`, { limit: 'memory' })
}

// Runs argv in a fresh sandbox; resolves once every process of it is gone.
export async function sandboxed (argv: string[], o: SandboxOptions): Promise<SandboxResult> {
  if (o.signal?.aborted) throw JOB_CANCELLED()
  const cgroup = await StepCgroup.create(o.workDir, o.limits)
  try {
    const procs = cgroup?.procs ?? []
    const child = spawn('/bin/sh', ['-c', JOIN, 'sh', String(procs.length), ...procs, 'setpriv', '--pdeathsig', 'KILL', '--', ...UNSHARE, ...argv], {
      stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: { ...BASE_ENV, ...o.env }
    })
    const tail: string[] = []
    const collect = (stream: NodeJS.ReadableStream, name: 'stdout' | 'stderr') => {
      let partial = ''
      stream.setEncoding('utf8')
      const emit = (line: string) => {
        tail.push(line)
        if (tail.length > TAIL_LINES) tail.shift()
        o.onLine?.(line, name)
      }
      stream.on('data', (chunk: string) => {
        const parts = (partial + chunk).split('\n')
        partial = parts.pop()!
        for (const line of parts) emit(line)
      })
      stream.on('end', () => { if (partial) emit(partial) })
    }
    collect(child.stdout!, 'stdout')
    collect(child.stderr!, 'stderr')
    if (o.input !== undefined) {
      child.stdin!.on('error', () => {})
      child.stdin!.end(o.input)
    }
    let inner: number[] = []
    let why: 'cancel' | 'time' | undefined
    const kill = (reason: 'cancel' | 'time') => {
      why ??= reason
      // The namespace's PID 1 first: unshare then exits once the kernel has killed the rest.
      inner = childrenOf(child.pid!)
      for (const pid of inner) { try { process.kill(pid, 'SIGKILL') } catch {} }
      child.kill('SIGKILL')
    }
    const onAbort = () => kill('cancel')
    o.signal?.addEventListener('abort', onAbort, { once: true })
    const timer = o.limits.timeoutMs > 0 ? setTimeout(() => kill('time'), o.limits.timeoutMs) : undefined
    const code = await new Promise<number>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (c, signal) => resolve(c ?? 128 + (signal ? signalNumber(signal) : 0)))
    }).finally(() => {
      clearTimeout(timer)
      o.signal?.removeEventListener('abort', onAbort)
    })
    await gone(inner)
    const oomKills = await cgroup?.oomKills() ?? 0
    if (why === 'cancel') throw JOB_CANCELLED()
    if (why === 'time') throw limitError(o.what, o.limits, 'time')
    return { exitCode: code, tail, oomKills }
  } finally {
    await cgroup?.remove()
  }
}

export interface StepEvents {
  log: (line: string) => void
  progress: (phase: string, done: number, total: number) => void
}

// Runs a layer step (sandbox-init.ts) on a volume; resolves with what the step returns.
export async function runStep<T> (job: Record<string, unknown>, o: Omit<SandboxOptions, 'input' | 'onLine'> & StepEvents): Promise<T> {
  let result: { ok: true, value: T } | { ok: false, code: string, message: string, details?: Record<string, unknown> } | undefined
  const r = await sandboxed([process.execPath, INIT], {
    ...o,
    input: JSON.stringify(job),
    onLine: (line, stream) => {
      if (stream === 'stderr' || !line.startsWith('{')) return o.log(line)
      let ev: any
      try { ev = JSON.parse(line) } catch { return o.log(line) }
      if (ev.t === 'log') o.log(String(ev.line))
      else if (ev.t === 'progress') o.progress(String(ev.phase), Number(ev.done), Number(ev.total))
      else if (ev.t === 'done') result = { ok: true, value: ev.value as T }
      else if (ev.t === 'error') result = { ok: false, code: String(ev.code), message: String(ev.message), details: ev.details }
    }
  })
  if (r.oomKills > 0) throw limitError(o.what, o.limits, 'memory')
  if (result?.ok) return result.value
  if (result) {
    const code = isErrorCode(result.code) ? result.code : 'BUILD_FAILED'
    throw new OsfarmError(code, result.message, result.details)
  }
  throw BUILD_FAILED(`${o.what}: the sandbox ended (exit ${r.exitCode}) without a result: ${lastLines(r.tail)}`)
}

// The build dir and limits of the base step running now: the builder sets them around a
// flavour's build(), whose tools (tools/mmdebstrap.ts, tools/tar.ts) read them.
export const toolSandbox = new AsyncLocalStorage<{ workDir: string, limits: Limits }>()

// A tool run in a sandbox (mmdebstrap, tar), its output to onLine; its exit code is the
// caller's to read. Outside a build (no toolSandbox), workDir names the cgroup and no time
// limit applies.
export async function runTool (argv: string[], o: Omit<SandboxOptions, 'onLine' | 'limits' | 'workDir'> & { workDir: string, onLine?: (line: string) => void }): Promise<SandboxResult> {
  const ctx = toolSandbox.getStore() ?? { workDir: o.workDir, limits: { timeoutMs: 0, memoryBytes: 0, cpus: 0 } }
  const r = await sandboxed(argv, { ...o, ...ctx, onLine: line => o.onLine?.(line) })
  if (r.oomKills > 0) throw limitError(o.what, ctx.limits, 'memory')
  return r
}

function childrenOf (pid: number): number[] {
  try {
    // Read synchronously: the kill must not wait for the event loop.
    const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
    return text.split(/\s+/).filter(Boolean).map(Number)
  } catch {
    return []
  }
}

// Waits (bounded) until the given processes no longer exist.
async function gone (pids: number[]): Promise<void> {
  const deadline = Date.now() + GONE_WAIT_MS
  for (const pid of pids) {
    while (Date.now() < deadline && await fs.access(`/proc/${pid}`).then(() => true, () => false)) {
      await new Promise(resolve => setTimeout(resolve, 10))
    }
  }
}

function signalNumber (signal: NodeJS.Signals): number {
  return os.constants.signals[signal] ?? 0
}
