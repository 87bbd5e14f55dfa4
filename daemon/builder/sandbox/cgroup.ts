// A cgroup per build step, for its memory, CPU and process limits: cgroup v2 where the
// daemon's cgroup has those controllers delegated to it, else the v1 hierarchies (memory, cpu,
// pids) where they are mounted, else none (logged once by the builder; the step's PID
// namespace and time limit still apply). Groups are named for the build dir, so a restarted
// daemon removes exactly the ones its crashed run left.

import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { hashParts } from '../../blocks/hash.js'

const ROOT = '/sys/fs/cgroup'
// Against fork bombs: far more than apt or any build script starts.
export const STEP_PIDS_MAX = 8192

export interface StepLimits {
  // 0: three quarters of the host's memory.
  memoryBytes: number
  // CPUs' worth of time per period (1.5 = one and a half cores); 0: no cap.
  cpus: number
}

export interface CgroupSupport {
  kind: 'v2' | 'v1' | 'none'
  // Why limits are not (all) applied.
  reason?: string
}

interface Hierarchy {
  controller: 'memory' | 'cpu' | 'pids' | 'unified'
  // The daemon's own group in that hierarchy: steps' groups go under it.
  parent: string
}

let detected: Promise<{ support: CgroupSupport, hierarchies: Hierarchy[] }> | undefined

async function detect (): Promise<{ support: CgroupSupport, hierarchies: Hierarchy[] }> {
  const own = await fs.readFile('/proc/self/cgroup', 'utf8').catch(() => '')
  const lines = own.split('\n').filter(Boolean).map(l => {
    const [, ctrls, p] = /^\d+:([^:]*):(.*)$/.exec(l) ?? []
    return { ctrls: (ctrls ?? '').split(','), path: p ?? '/' }
  })
  const v2 = await fs.readFile(path.join(ROOT, 'cgroup.controllers'), 'utf8').then(() => true, () => false)
  if (v2) {
    const rel = lines.find(l => l.ctrls.length === 1 && l.ctrls[0] === '')?.path ?? '/'
    const parent = path.join(ROOT, rel)
    const wanted = ['memory', 'cpu', 'pids']
    const enabled = async () => (await fs.readFile(path.join(parent, 'cgroup.subtree_control'), 'utf8').catch(() => '')).split(/\s+/)
    let on = await enabled()
    if (!wanted.every(c => on.includes(c))) {
      // Succeeds only where the group was delegated and holds no process itself.
      await fs.writeFile(path.join(parent, 'cgroup.subtree_control'), wanted.filter(c => !on.includes(c)).map(c => '+' + c).join(' ')).catch(() => {})
      on = await enabled()
    }
    if (wanted.every(c => on.includes(c))) return { support: { kind: 'v2' }, hierarchies: [{ controller: 'unified', parent }] }
    return { support: { kind: 'none', reason: `cgroup v2: memory, cpu and pids are not delegated to ${parent} (systemd: Delegate=yes)` }, hierarchies: [] }
  }
  const hierarchies: Hierarchy[] = []
  for (const controller of ['memory', 'cpu', 'pids'] as const) {
    const line = lines.find(l => l.ctrls.includes(controller))
    const mount = path.join(ROOT, controller)
    if (!line || !await fs.access(path.join(mount, 'cgroup.procs')).then(() => true, () => false)) continue
    const parent = path.join(mount, line.path)
    const probe = path.join(parent, `osfarm-probe-${process.pid}`)
    if (await fs.mkdir(probe).then(() => true, () => false)) {
      await fs.rmdir(probe).catch(() => {})
      hierarchies.push({ controller, parent })
    }
  }
  if (!hierarchies.length) return { support: { kind: 'none', reason: 'no writable cgroup hierarchy (neither v2 with delegated controllers nor v1)' }, hierarchies }
  const missing = ['memory', 'cpu', 'pids'].filter(c => !hierarchies.some(h => h.controller === c))
  return { support: { kind: 'v1', ...(missing.length ? { reason: `cgroup v1: no writable ${missing.join(', ')} hierarchy` } : {}) }, hierarchies }
}

export async function cgroupSupport (): Promise<CgroupSupport> {
  detected ??= detect()
  return (await detected).support
}

// Groups of this build dir (its own prefix, so daemons with other data dirs keep theirs).
export function cgroupPrefix (workDir: string): string {
  return `osfarm-step-${hashParts([path.resolve(workDir)]).subarray(0, 6).toString('hex')}-`
}

let counter = 0

export class StepCgroup {
  // The cgroup.procs files the step's first process writes itself into.
  readonly procs: string[]
  readonly #dirs: string[]
  readonly #memoryEvents: string | undefined

  private constructor (dirs: string[], memoryEvents: string | undefined) {
    this.#dirs = dirs
    this.procs = dirs.map(d => path.join(d, 'cgroup.procs'))
    this.#memoryEvents = memoryEvents
  }

  // undefined where this host gives no cgroups to use.
  static async create (workDir: string, limits: StepLimits): Promise<StepCgroup | undefined> {
    detected ??= detect()
    const { hierarchies } = await detected
    if (!hierarchies.length) return undefined
    const name = `${cgroupPrefix(workDir)}${process.pid}-${++counter}`
    const memory = limits.memoryBytes > 0 ? limits.memoryBytes : Math.floor(os.totalmem() * 0.75)
    const dirs: string[] = []
    let events: string | undefined
    try {
      for (const h of hierarchies) {
        const dir = path.join(h.parent, name)
        await fs.mkdir(dir)
        dirs.push(dir)
        const set = (file: string, value: string) => fs.writeFile(path.join(dir, file), value)
        if (h.controller === 'unified') {
          await set('memory.max', String(memory))
          await set('memory.swap.max', '0').catch(() => {})
          await set('pids.max', String(STEP_PIDS_MAX))
          if (limits.cpus > 0) await set('cpu.max', `${Math.round(limits.cpus * 100_000)} 100000`)
          events = path.join(dir, 'memory.events')
        } else if (h.controller === 'memory') {
          await set('memory.limit_in_bytes', String(memory))
          events = path.join(dir, 'memory.oom_control')
        } else if (h.controller === 'pids') {
          await set('pids.max', String(STEP_PIDS_MAX))
        } else if (limits.cpus > 0) {
          await set('cpu.cfs_period_us', '100000')
          await set('cpu.cfs_quota_us', String(Math.round(limits.cpus * 100_000)))
        }
      }
    } catch (err) {
      for (const d of dirs) await fs.rmdir(d).catch(() => {})
      throw err
    }
    return new StepCgroup(dirs, events)
  }

  // How many processes the kernel killed for going over the memory limit.
  async oomKills (): Promise<number> {
    if (!this.#memoryEvents) return 0
    const text = await fs.readFile(this.#memoryEvents, 'utf8').catch(() => '')
    return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0)
  }

  async remove (): Promise<void> {
    for (const d of this.#dirs) await removeGroup(d)
  }
}

// Removes a step group; whatever still runs in it (nothing, after a clean step) is killed first.
async function removeGroup (dir: string): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const err = await fs.rmdir(dir).then(() => undefined, (e: NodeJS.ErrnoException) => e)
    if (!err || err.code === 'ENOENT') return
    if (err.code !== 'EBUSY') throw err
    const pids = (await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => '')).split('\n').filter(Boolean)
    for (const pid of pids) { try { process.kill(Number(pid), 'SIGKILL') } catch {} }
    await new Promise(resolve => setTimeout(resolve, 20 * (attempt + 1)))
  }
  throw new Error(`cgroup ${dir} stays busy`)
}

// At start: the groups a crashed run of this build dir left.
export async function removeStaleCgroups (workDir: string): Promise<string[]> {
  detected ??= detect()
  const { hierarchies } = await detected
  const prefix = cgroupPrefix(workDir)
  const removed: string[] = []
  for (const h of hierarchies) {
    for (const name of await fs.readdir(h.parent).catch(() => [] as string[])) {
      if (!name.startsWith(prefix)) continue
      await removeGroup(path.join(h.parent, name)).then(() => removed.push(path.join(h.parent, name)), () => {})
    }
  }
  return removed
}
