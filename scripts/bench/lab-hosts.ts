// Daemons on the network lab (scripts/lab/lab.sh) for the seed and prestage benches: a lab of
// their own (LAB_PREFIX), three DHT nodes on the hub, one osfarmd per peer namespace, a fleet
// where all allow all, typed RPC clients over the daemons' sockets, and link byte counters.

import fs from 'node:fs/promises'
import path from 'node:path'
import os from 'node:os'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { OsfarmClient } from '../../client/client.js'
import { eventually } from '../../testing/eventually.js'
import { adminSocketPath, type JobInfo } from '../../protocol/rpc.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const LAB = path.join(ROOT, 'scripts/lab/lab.sh')
const OSFARMD = path.join(ROOT, 'dist/daemon/main.js')
const STEP_TIMEOUT_MS = 10 * 60_000

export interface Host { ns: string, addr: string, dir: string, socket: string, proc: ChildProcess, key: string, client: OsfarmClient }

export class Lab {
  readonly prefix: string
  readonly procs: ChildProcess[] = []
  readonly hosts: Host[] = []
  #dhtNodes: string[] = []

  constructor (prefix: string) {
    this.prefix = prefix
  }

  get env (): Record<string, string> { return { ...process.env as Record<string, string>, LAB_PREFIX: this.prefix } }

  async lab (...args: string[]): Promise<void> {
    await execa(LAB, args, { env: this.env, timeout: STEP_TIMEOUT_MS })
  }

  async up (peers: number, rate: string): Promise<void> {
    await this.lab('up', String(peers), rate)
    // Three DHT nodes on the hub: with a single one, announces across namespaces were not found.
    this.#dhtNodes = ['10.201.1.1:49737', '10.201.1.1:49738', '10.201.1.1:49739']
    for (const [i, node] of this.#dhtNodes.entries()) {
      const dht = this.bg('h0', 'node', [OSFARMD, 'dht', '--host', '10.201.1.1', '--port', node.split(':')[1]!, ...(i ? ['--bootstrap', this.#dhtNodes[0]!] : [])])
      await waitFor(dht, 'dht ready')
    }
  }

  bg (ns: string, cmd: string, args: string[]): ChildProcess {
    const p = spawn('ip', ['netns', 'exec', `${this.prefix}-${ns}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    p.stderr!.on('data', () => {})
    this.procs.push(p)
    return p
  }

  async startHost (ns: string, addr: string, dir: string): Promise<Host> {
    await fs.rm(dir, { recursive: true, force: true })
    await fs.mkdir(dir, { recursive: true })
    const socket = path.join(dir, 'osfarmd.sock')
    // Logs go to a file per host, for when a run goes wrong.
    const log = await fs.open(path.join(dir, 'osfarmd.log'), 'a')
    // BENCH_CPU_PROF=1: each daemon writes a V8 CPU profile into its dir when it stops;
    // BENCH_NODE_FLAGS: more node options for every daemon (e.g. --trace-gc).
    const prof = [...process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [], ...(process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)]
    const proc = spawn('ip', ['netns', 'exec', `${this.prefix}-${ns}`, 'node', ...prof, OSFARMD, '--data', path.join(dir, 'data'), '--socket', socket, '--log-level', 'info'], { stdio: ['ignore', log.fd, log.fd] })
    proc.once('exit', () => { log.close().catch(() => {}) })
    this.procs.push(proc)
    let client: OsfarmClient | undefined
    for (let i = 0; i < 100 && !client; i++) {
      // Root's socket: the lab configures each host's fleet.
      client = await OsfarmClient.connect(adminSocketPath(socket)).catch(() => undefined)
      if (!client) await new Promise(resolve => setTimeout(resolve, 100))
    }
    if (!client) throw new Error(`osfarmd in ${ns} did not come up`)
    const h: Host = { ns, addr, dir, socket, proc, key: '', client }
    this.hosts.push(h)
    return h
  }

  async fleet (hosts: Host[]): Promise<void> {
    // Every key first, so each host allows the others before it ever sees them.
    for (const h of hosts) h.key = (await h.client.call('fleet.show', {})).publicKey
    let secret = ''
    for (const h of hosts) {
      const peers = hosts.filter(o => o !== h).map(o => o.key)
      const info = await h.client.call('fleet.init', { ...(secret ? { secret } : {}), bootstrap: this.#dhtNodes, dhtHost: h.addr, peers })
      secret ||= info.secret!
    }
    // Every host must have a session with every other (well under a second since the swarm
    // runs the DHT's reachability test itself; see fleet-swarm.ts).
    const end = Date.now() + 45_000
    for (;;) {
      const missing: Host[] = []
      for (const h of hosts) if ((await h.client.call('peer.list', {})).length < hosts.length - 1) missing.push(h)
      if (!missing.length) return
      if (Date.now() > end) throw new Error(`${missing.map(h => h.ns).join(', ')} did not see all peers in 45 s`)
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }

  // Bytes through the hub's side of peer i's link, both ways.
  async linkBytes (i: number): Promise<number> {
    const { stdout } = await execa('ip', ['netns', 'exec', `${this.prefix}-h0`, 'cat', `/sys/class/net/h0-p${i}/statistics/rx_bytes`, `/sys/class/net/h0-p${i}/statistics/tx_bytes`])
    return stdout.split('\n').reduce((n, l) => n + Number(l), 0)
  }

  // Packets the shaper dropped on peer i's downlink (the hub's egress to it) so far.
  async drops (i: number): Promise<number> {
    const { stdout } = await execa('ip', ['netns', 'exec', `${this.prefix}-h0`, 'tc', '-s', 'qdisc', 'show', 'dev', `h0-p${i}`])
    return Number(/dropped (\d+)/.exec(stdout)?.[1] ?? 0)
  }

  // Bytes peer i sent into the hub (its upload).
  async uploadBytes (i: number): Promise<number> {
    const { stdout } = await execa('ip', ['netns', 'exec', `${this.prefix}-h0`, 'cat', `/sys/class/net/h0-p${i}/statistics/rx_bytes`])
    return Number(stdout)
  }

  async down (): Promise<void> {
    for (const h of this.hosts) h.client.close()
    for (const h of this.hosts) h.proc.kill('SIGTERM')
    await new Promise(resolve => setTimeout(resolve, 1000))
    for (const p of this.procs) p.kill('SIGKILL')
    await this.lab('down').catch(() => {})
  }
}

export async function waitFor (p: ChildProcess, text: string, ms = 30_000): Promise<void> {
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for "${text}": ${out}`)), ms)
    const onData = (d: Buffer) => { out += d; if (out.includes(text)) { clearTimeout(timer); p.stdout!.off('data', onData); p.stdout!.resume(); resolve() } }
    p.stdout!.on('data', onData)
    p.once('exit', code => { clearTimeout(timer); reject(new Error(`exited ${code}: ${out}`)) })
  })
}

// Waits for a job to end (bounded), by polling.
export async function waitJob (h: Host, id: string, ms = STEP_TIMEOUT_MS): Promise<JobInfo> {
  return await eventually(`job ${id} on ${h.ns} ended`, async () => {
    const j = await h.client.call('job.get', { id })
    return j.state !== 'running' ? j : undefined
  }, { timeoutMs: ms, intervalMs: 250 })
}

// CPU seconds (user + system) the hosts' daemons have used so far.
export async function cpuSeconds (hosts: Host[]): Promise<number> {
  let ticks = 0
  for (const h of hosts) {
    const stat = await fs.readFile(`/proc/${h.proc.pid}/stat`, 'utf8').catch(() => '')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    ticks += Number(fields[11] ?? 0) + Number(fields[12] ?? 0)
  }
  return ticks / 100
}

// The machine's load while a bench runs: 1-minute load average and cores.
export function load (): string {
  return `load ${os.loadavg()[0]!.toFixed(2)} on ${os.cpus().length} cores`
}

// An XFS filesystem with reflink on a loop file, for data dirs (snapshots cost no copy).
export async function mountXfs (image: string, mnt: string, size: string): Promise<() => Promise<void>> {
  await execa('umount', [mnt], { reject: false })
  await fs.rm(image, { force: true })
  await execa('truncate', ['-s', size, image])
  await execa('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', image])
  await fs.mkdir(mnt, { recursive: true })
  await execa('mount', ['-o', 'loop', image, mnt])
  return async () => {
    await execa('umount', [mnt], { reject: false })
    await fs.rm(image, { force: true })
  }
}
