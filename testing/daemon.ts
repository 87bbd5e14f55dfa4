// Spawns the real osfarmd and osfarmctl (compiled, in dist/) against a temp data dir.

import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const OSFARMD = path.join(DIST, 'daemon/main.js')
export const OSFARMCTL = path.join(DIST, 'client/main.js')
const READY_TIMEOUT_MS = 20_000

export interface TestDaemon {
  dir: string
  dataDir: string
  socket: string
  proc: ChildProcess
  output (): string
  // Runs osfarmctl against this daemon; never throws on a non-zero exit.
  ctl (...args: string[]): Promise<{ stdout: string, stderr: string, exitCode: number }>
  ctlJson<T = any> (...args: string[]): Promise<T>
  stop (signal?: NodeJS.Signals): Promise<number | null>
  restart (): Promise<TestDaemon>
}

export async function tempDir (prefix = 'osfarm-test-'): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix))
}

export async function startDaemon (options: { dir?: string, args?: string[], env?: Record<string, string>, nodeArgs?: string[] } = {}): Promise<TestDaemon> {
  const dir = options.dir ?? await tempDir()
  const dataDir = path.join(dir, 'data')
  const socket = path.join(dir, 'osfarmd.sock')
  const proc = spawn(process.execPath, [...(options.nodeArgs ?? []), OSFARMD, '--data', dataDir, '--socket', socket, '--log-level', 'debug', ...(options.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...options.env }
  })
  let output = ''
  proc.stdout!.on('data', d => { output += d })
  proc.stderr!.on('data', d => { output += d })
  const exited = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`osfarmd not ready in ${READY_TIMEOUT_MS} ms:\n${output}`)), READY_TIMEOUT_MS)
    const check = () => { if (output.includes('osfarmd ready')) { clearTimeout(timer); resolve() } }
    proc.stdout!.on('data', check)
    exited.then(code => { clearTimeout(timer); reject(new Error(`osfarmd exited with ${code}:\n${output}`)) })
  })
  const ctl = async (...args: string[]) => {
    const r = await execa(process.execPath, [OSFARMCTL, '--socket', socket, ...args], { reject: false })
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 }
  }
  const d: TestDaemon = {
    dir,
    dataDir,
    socket,
    proc,
    output: () => output,
    ctl,
    async ctlJson (...args) {
      const r = await ctl(...args, '--json')
      if (r.exitCode !== 0) throw new Error(`osfarmctl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`)
      return JSON.parse(r.stdout)
    },
    async stop (signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode
      proc.kill(signal)
      return exited
    },
    async restart () {
      await d.stop()
      return startDaemon({ ...options, dir })
    }
  }
  return d
}
