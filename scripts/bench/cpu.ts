// npm run bench:cpu — the engine's cost: CPU seconds per GB of absent data delivered by a
// fetch (received blocks × 4096 bytes), the fetching and the serving daemon apart, beside a
// floor measured in the same run and lab (cpu-floor.ts: the same blocks over kernel TCP with
// the same encryption, zstd level 1, BLAKE3 and pwrite, one thread a side, and the same
// without each layer) and rsync + zstd. Cases: the whole image T (ssh.img) to a host holding
// nothing, and T to a host holding S (minbase.img); each at 1 Gbit and unshaped.
//
// Its own lab (LAB_PREFIX=osc): the peer namespace p1 serves, the hub h0 fetches, three DHT
// nodes on the hub; the daemons' data on a loop-mounted XFS with reflink. Per run: wall and job
// time, CPU (user / sys) of each side (a daemon's reaped children included), peak RSS of each
// daemon (VmHWM, reset before the run), the job's phases, and CPU by thread (threads labelled
// once from gdb backtraces: Node 20 names every thread "node"). Needs root.
//
// Env: BENCH_RUNS=2 (runs of each row; the one with the least total CPU is kept, every run's
// total printed)  BENCH_RATES=1gbit,none  BENCH_CASES=whole,delta  BENCH_FLOOR_LAYERS=0 (only
// the full and the plain floor)  BENCH_RSYNC=0  BENCH_PROF=1 (both daemons under --cpu-prof;
// the top functions by self time in each kept run; profiles kept in BENCH_PROF_DIR, default
// $OUT/cpu-prof)  BENCH_TCP_LANES=0 (blocks over the swarm connection, UDX)  BENCH_NODE_FLAGS
// (more node flags for both daemons)  OUT (images)

import fs from 'node:fs/promises'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { execa } from 'execa'
import { BlockHasher } from '../../daemon/blocks/block-hasher.js'
import { isZeroSlot, type Manifest } from '../../daemon/blocks/manifest.js'
import { HASH_BYTES } from '../../daemon/blocks/hash.js'
import type { FetchResult, JobInfo, TransferStats } from '../../protocol/rpc.js'
import { eventually } from '../../testing/eventually.js'
import { Lab, ROOT, load, mountXfs, waitFor, waitJob, type Host } from './lab-hosts.js'

const PREFIX = 'osc'
const IMAGES = process.env.OUT ?? '/var/tmp/osfarm-bench'
const WORK = path.join(IMAGES, 'cpu')
const XFS_IMG = path.join(IMAGES, 'cpu-xfs.img')
const XFS = path.join(IMAGES, 'cpu-xfs')
const FLOOR = path.join(ROOT, 'dist/scripts/bench/cpu-floor.js')
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 2))
const RATES = (process.env.BENCH_RATES ?? '1gbit,none').split(',').filter(Boolean)
const CASES = (process.env.BENCH_CASES ?? 'whole,delta').split(',').filter(Boolean) as CaseName[]
const PROF = process.env.BENCH_PROF === '1'
const PROF_DIR = process.env.BENCH_PROF_DIR ?? path.join(IMAGES, 'cpu-prof')
const STEP_MS = 10 * 60_000
const BENCH_MS = 30 * 60_000
const BLOCK = 4096
const HUB = '10.201.1.1'
const PEER = '10.201.1.2'
// The DHT nodes Lab.up starts on the hub.
const DHT_NODES = ['10.201.1.1:49737', '10.201.1.1:49738', '10.201.1.1:49739']
const TCP_LANES = process.env.BENCH_TCP_LANES !== '0'
const RSYNC_PORT = 8731
const FLOOR_PORT = 40100
const GB = 1e9

type CaseName = 'whole' | 'delta'
interface Cpu { user: number, sys: number }
interface Row {
  method: string
  runs: number[]
  // CPU seconds the rest of the machine used during each run (the bench, the DHT nodes, any
  // other work): the noise beside each run's total.
  others: number[]
  // The machine's busy CPU seconds during this run, less the row's own.
  other?: number
  wall: number
  // Bytes through the hub's side of the link, both ways.
  wire?: number
  job?: number
  fetch?: Cpu
  serve?: Cpu
  rss?: [number, number]
  note?: string
}
interface OsfarmRun {
  row: Row
  stats: TransferStats
  threads: [Map<string, ThreadCpu>, Map<string, ThreadCpu>]
  window: [number, number]
}
interface ThreadCpu { count: number, seconds: number }
interface ProcStat { utime: number, stime: number, cutime: number, cstime: number }

const lab = new Lab(PREFIX)
let unmount: (() => Promise<void>) | undefined
const total = (c?: Cpu): number => c ? c.user + c.sys : 0
const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

function withTimeout<T> (what: string, p: Promise<T>, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout
  return Promise.race([p, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms / 1000} s`)), ms) })]).finally(() => clearTimeout(timer))
}

// ---- /proc ----

async function procStat (pid: number, tid: number | string = pid): Promise<ProcStat & { ns: number }> {
  const st = await fs.readFile(tid === pid ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')
  const f = st.slice(st.lastIndexOf(') ') + 2).split(' ')
  const sched = await fs.readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => '0')
  return { utime: Number(f[11] ?? 0) / 100, stime: Number(f[12] ?? 0) / 100, cutime: Number(f[13] ?? 0) / 100, cstime: Number(f[14] ?? 0) / 100, ns: Number(sched.split(' ')[0]) }
}

// The whole process (every thread, live or gone) and the children it has reaped (a fetch runs
// xfs_io for its reflink copies): /proc/PID/stat.
async function processCpu (pid: number): Promise<Cpu & { children: number }> {
  const st = await fs.readFile(`/proc/${pid}/stat`, 'utf8')
  const f = st.slice(st.lastIndexOf(') ') + 2).split(' ').map(Number)
  return { user: (f[11]! + f[13]!) / 100, sys: (f[12]! + f[14]!) / 100, children: (f[13]! + f[14]!) / 100 }
}

// CPU seconds every core of the machine has been busy so far (/proc/stat).
async function machineBusy (): Promise<number> {
  const [, user, nice, system, , , irq, softirq, steal] = (await fs.readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).map(Number)
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100
}

async function tids (pid: number): Promise<string[]> {
  return await fs.readdir(`/proc/${pid}/task`).catch(() => [] as string[])
}

// CPU ns of each live thread.
async function threadNs (pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const tid of await tids(pid)) out.set(tid, (await procStat(pid, tid)).ns)
  return out
}

async function resetPeakRss (pid: number): Promise<void> {
  await fs.writeFile(`/proc/${pid}/clear_refs`, '5')
}

async function peakRssMiB (pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

// ---- thread labels ----

// Node 20 names every thread "node", so threads are told apart by what they run: one gdb
// backtrace per thread, taken outside any measured run. Worker
// threads alive when the daemon was ready are BlockHasher's (it starts with the daemon); the
// later ones are BlockPool's (warmed when the fleet opens).
class ThreadLabels {
  readonly #labels = new Map<string, string>()
  #startup = new Set<string>()
  #gdb = true
  readonly pid: number

  constructor (pid: number) {
    this.pid = pid
  }

  async markStartup (): Promise<void> {
    this.#startup = new Set(await tids(this.pid))
  }

  label (tid: string): string {
    return this.#labels.get(tid) ?? 'unlabelled'
  }

  async update (): Promise<void> {
    const live = await tids(this.pid)
    if (live.every(t => this.#labels.has(t))) return
    for (const t of live) if (t === String(this.pid)) this.#labels.set(t, 'main')
    if (!this.#gdb) return
    const r = await execa('gdb', ['-nx', '-batch', '-p', String(this.pid), '-ex', 'set pagination off', '-ex', 'thread apply all bt'], { reject: false, timeout: 120_000 })
    if (r.exitCode !== 0 && !r.stdout.includes('LWP')) {
      this.#gdb = false
      console.log(`(gdb could not read the threads of ${this.pid}: ${(r.stderr || r.stdout).split('\n')[0]}; threads unlabelled)`)
      return
    }
    for (const block of r.stdout.split(/\n(?=Thread \d+ )/)) {
      const tid = /\(LWP (\d+)\)/.exec(block)?.[1]
      if (!tid || tid === String(this.pid)) continue
      this.#labels.set(tid, classify(block, this.#startup.has(tid)))
    }
  }
}

function classify (bt: string, atStartup: boolean): string {
  if (/worker::Worker::StartThread/.test(bt)) return atStartup ? 'hash-worker' : 'block-worker'
  if (/PlatformWorkerThread/.test(bt)) return 'v8-platform'
  if (/DelayedTaskScheduler/.test(bt)) return 'v8-delayed-tasks'
  if (/threadpool\.c|\bworker \(arg=/.test(bt)) return 'libuv-pool'
  if (/StartIoThreadMain/.test(bt)) return 'inspector-signal'
  // --cpu-prof: one sampling thread per isolate.
  if (/ProfilerEventsProcessor|SamplingEventsProcessor/.test(bt)) return 'v8-cpu-profiler'
  // Else the thread's entry function: the last named frame before start_thread.
  const frames = bt.split('\n').filter(l => /^#\d+/.test(l) && !/ in \?\? \(/.test(l))
  const at = frames.findIndex(l => /start_thread/.test(l))
  const entry = at > 0 ? / in (.+?)(?: \(|$)/.exec(frames[at - 1]!)?.[1] : undefined
  return entry ? `other: ${entry.replace(/\(.*$/, '').slice(0, 60)}` : 'other'
}

async function threadsBy (labels: ThreadLabels, before: Map<string, number>, after: Map<string, number>, processSeconds: number, children: number): Promise<Map<string, ThreadCpu>> {
  const by = new Map<string, ThreadCpu>()
  let sum = 0
  for (const [tid, ns] of after) {
    const s = (ns - (before.get(tid) ?? 0)) / 1e9
    const name = labels.label(tid)
    const e = by.get(name) ?? { count: 0, seconds: 0 }
    e.count++
    e.seconds += s
    by.set(name, e)
    sum += s
  }
  // Threads that ended during the run are in the process's total only.
  const gone = [...before.keys()].filter(t => !after.has(t)).length
  if (gone || processSeconds - children - sum > 0.05) by.set('(threads that ended)', { count: gone, seconds: Math.max(0, processSeconds - children - sum) })
  if (children > 0) by.set('(child processes)', { count: 0, seconds: children })
  return by
}

// ---- images and the blocks each case delivers ----

interface CaseData { name: CaseName, title: string, records: Buffer, blocks: number, listFile: string }

function absentRecords (t: Manifest, s?: Manifest): Buffer {
  const key = (m: Manifest, i: number) => m.hashes.toString('latin1', i * HASH_BYTES, (i + 1) * HASH_BYTES)
  const have = new Set<string>()
  if (s) for (let i = 0; i < s.hashes.length / HASH_BYTES; i++) if (!isZeroSlot(s.hashes, i)) have.add(key(s, i))
  const seen = new Set<string>()
  const out: Buffer[] = []
  for (let i = 0; i < t.hashes.length / HASH_BYTES; i++) {
    if (isZeroSlot(t.hashes, i)) continue
    const k = key(t, i)
    if (have.has(k) || seen.has(k)) continue
    seen.add(k)
    const r = Buffer.alloc(4 + HASH_BYTES)
    r.writeUInt32LE(i, 0)
    t.hashes.copy(r, 4, i * HASH_BYTES, (i + 1) * HASH_BYTES)
    out.push(r)
  }
  return Buffer.concat(out)
}

// ---- processes in the lab ----

interface Proc { p: ChildProcess, out: string[], err: string[], exit: Promise<number | null> }

function run (ns: string, cmd: string, args: string[]): Proc {
  const p = spawn('ip', ['netns', 'exec', `${PREFIX}-${ns}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  lab.procs.push(p)
  const out: string[] = []
  const err: string[] = []
  p.stdout!.on('data', d => out.push(String(d)))
  p.stderr!.on('data', d => err.push(String(d)))
  const exit = new Promise<number | null>(resolve => p.once('exit', code => resolve(code)))
  return { p, out, err, exit }
}

const lastJson = (out: string[]): any => JSON.parse(out.join('').trim().split('\n').pop()!)

// ---- osfarm ----

// Lab.fleet's fleet, with the TCP lanes on or off.
async function fleet (hosts: Host[]): Promise<void> {
  for (const h of hosts) h.key = (await h.client.call('fleet.show', {})).publicKey
  let secret = ''
  for (const h of hosts) {
    const peers = hosts.filter(o => o !== h).map(o => o.key)
    const info = await h.client.call('fleet.init', { ...(secret ? { secret } : {}), bootstrap: DHT_NODES, dhtHost: h.addr, peers, ...(TCP_LANES ? {} : { tcpLanes: false }) })
    secret ||= info.secret!
  }
  await eventually('every host has a session with the other', async () => {
    for (const h of hosts) if ((await h.client.call('peer.list', {})).length < hosts.length - 1) return false
    return true
  }, { timeoutMs: 45_000, intervalMs: 200 })
}

// The fetcher's lanes: undefined from an osfarmd without TCP lanes (so the bench also runs
// against older commits), else one per peer, null while blocks go over the swarm connection.
interface Lane { address: string, bytesIn: number }
async function lanes (fetcher: Host): Promise<Array<Lane | null> | undefined> {
  const peers = await fetcher.client.call('peer.list', {}) as unknown as Array<{ lane?: Lane | null }>
  return peers.some(p => 'lane' in p) ? peers.map(p => p.lane ?? null) : undefined
}

// Bytes the fetcher has received over its TCP lane so far (0 without one).
async function laneBytesIn (fetcher: Host): Promise<number> {
  return ((await lanes(fetcher)) ?? []).reduce((n, l) => n + (l?.bytesIn ?? 0), 0)
}

async function osfarmRun (fetcher: Host, server: Host, labels: [ThreadLabels, ThreadLabels], root: string): Promise<OsfarmRun> {
  const pids = [fetcher.proc.pid!, server.proc.pid!]
  for (const l of labels) await l.update()
  await execa('sync')
  for (const pid of pids) await resetPeakRss(pid)
  const th0 = await Promise.all(pids.map(threadNs))
  const cpu0 = await Promise.all(pids.map(processCpu))
  const wire0 = await lab.linkBytes(1)
  const lane0 = await laneBytesIn(fetcher)
  const busy0 = await machineBusy()
  const t0 = process.hrtime.bigint()
  const job = await fetcher.client.call('image.fetch', { ref: root, from: server.key, wait: 30_000 })
  const end: JobInfo = await withTimeout('fetch', fetcher.client.call('job.watch', { id: job.id }))
  const t1 = process.hrtime.bigint()
  const busy = await machineBusy() - busy0
  const cpu1 = await Promise.all(pids.map(processCpu))
  const th1 = await Promise.all(pids.map(threadNs))
  const rss = await Promise.all(pids.map(peakRssMiB)) as [number, number]
  const wire = await lab.linkBytes(1) - wire0
  const lane = await laneBytesIn(fetcher) - lane0
  if (end.state !== 'done') throw new Error(`fetch ${end.state}: ${end.error?.message}`)
  const result = end.result as FetchResult
  await fetcher.client.call('image.remove', { id: result.image.id })
  const cpu = cpu1.map((c, i) => ({ user: c.user - cpu0[i]!.user, sys: c.sys - cpu0[i]!.sys }))
  const threads = await Promise.all([0, 1].map(i => threadsBy(labels[i]!, th0[i]!, th1[i]!, total(cpu[i]), cpu1[i]!.children - cpu0[i]!.children))) as [Map<string, ThreadCpu>, Map<string, ThreadCpu>]
  const s = result.stats!
  return {
    row: { method: 'osfarm', runs: [], others: [], wall: Number(t1 - t0) / 1e9, wire, job: s.elapsedMs / 1000, fetch: cpu[0], serve: cpu[1], other: busy - total(cpu[0]) - total(cpu[1]), rss, note: `received ${s.received} blocks${lane ? `; ${(lane / 1e6).toFixed(1)} MB in over the TCP lane` : ''}` },
    stats: s,
    threads,
    window: [Number(t0 / 1000n), Number(t1 / 1000n)]
  }
}

// ---- the floor ----

const FLOOR_ROWS: Array<{ method: string, flags: string[], write: boolean }> = [
  { method: 'floor (TCP+secretstream+zstd+BLAKE3+write)', flags: ['--crypto', '--zstd', '--hash'], write: true },
  { method: 'floor (TCP+zstd+BLAKE3+write)', flags: ['--zstd', '--hash'], write: true },
  { method: 'floor (TCP+BLAKE3+write)', flags: ['--hash'], write: true },
  { method: 'floor (TCP+write)', flags: [], write: true },
  { method: 'floor (plain TCP)', flags: [], write: false }
]

async function floorRun (c: CaseData, T: string, flags: string[], write: boolean, size: number): Promise<Row> {
  const out = path.join(XFS, 'floor.img')
  await fs.rm(out, { force: true })
  await execa('sync')
  const recv = run('h0', 'node', [FLOOR, 'recv', '--listen', `${HUB}:${FLOOR_PORT}`, '--list', c.listFile, ...flags, ...(write ? ['--out', out, '--size', String(size)] : [])])
  await waitFor(recv.p, 'ready')
  const wire0 = await lab.linkBytes(1)
  const busy0 = await machineBusy()
  const send = run('p1', 'node', [FLOOR, 'send', '--connect', `${HUB}:${FLOOR_PORT}`, '--list', c.listFile, '--image', T, ...flags.filter(f => f !== '--hash')])
  const codes = await withTimeout('floor', Promise.all([recv.exit, send.exit]))
  const busy = await machineBusy() - busy0
  if (codes.some(code => code !== 0)) throw new Error(`cpu-floor exited ${codes.join(', ')}: ${recv.err.join('')} ${send.err.join('')}`)
  const wire = await lab.linkBytes(1) - wire0
  const r = lastJson(recv.out)
  const s = lastJson(send.out)
  await fs.rm(out, { force: true })
  if (r.blocks !== c.blocks || r.bad) throw new Error(`the floor received ${r.blocks} of ${c.blocks} blocks, ${r.bad} bad`)
  return { method: '', runs: [], others: [], wall: r.seconds, wire, fetch: { user: r.user, sys: r.sys }, serve: { user: s.user, sys: s.sys }, other: busy - r.user - r.sys - s.processCpu, rss: [r.maxRssMiB, s.maxRssMiB], note: 'peak RSS: the whole process' }
}

// ---- rsync ----

async function rsyncRun (rsyncd: Proc, mode: CaseName, S: string, T: string): Promise<Row> {
  const target = path.join(XFS, 'rsync', path.basename(T))
  await fs.rm(path.dirname(target), { recursive: true, force: true })
  await fs.mkdir(path.dirname(target), { recursive: true })
  if (mode === 'delta') await execa('cp', ['--sparse=always', S, target])
  await execa('sync')
  const pid = rsyncd.p.pid!
  const d0 = await procStat(pid)
  const args = ['--sparse', mode === 'delta' ? '--no-whole-file' : '--whole-file', '--compress', '--compress-choice=zstd', `rsync://${PEER}:${RSYNC_PORT}/m/${path.basename(T)}`, target]
  // The client's CPU is its own and its children's (rsync forks a receiver): bash's time.
  const wire0 = await lab.linkBytes(1)
  const busy0 = await machineBusy()
  const t0 = performance.now()
  const r = await execa('ip', ['netns', 'exec', `${PREFIX}-h0`, 'bash', '-c', `TIMEFORMAT='%3U %3S'; time ( rsync ${args.map(a => `'${a}'`).join(' ')} ) 2>&1 >/dev/null`], { reject: false, all: true, timeout: STEP_MS })
  const wall = (performance.now() - t0) / 1000
  const wire = await lab.linkBytes(1) - wire0
  if (r.exitCode !== 0) throw new Error(`rsync failed: ${r.all}`)
  const [u, s] = String(r.all).trim().split('\n').pop()!.split(' ').map(Number)
  // The server's: the daemon's reaped children (the connection's process), once it has reaped it.
  for (let i = 0; i < 100; i++) {
    const children = await fs.readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')
    if (!children.trim()) break
    await sleep(100)
  }
  const d1 = await procStat(pid)
  const busy = await machineBusy() - busy0
  await fs.rm(path.dirname(target), { recursive: true, force: true })
  const client = { user: u!, sys: s! }
  const server = { user: d1.utime + d1.cutime - d0.utime - d0.cutime, sys: d1.stime + d1.cstime - d0.stime - d0.cstime }
  return {
    method: 'rsync+zstd',
    runs: [],
    others: [],
    wall,
    wire,
    fetch: client,
    serve: server,
    other: busy - total(client) - total(server)
  }
}

// Each row RUNS times; the run with the least total CPU is kept, every run's total noted.
async function best<R> (n: number, once: () => Promise<R>, rowOf: (r: R) => Row): Promise<R> {
  let kept: R | undefined
  const totals: number[] = []
  const others: number[] = []
  const cpu = (r: R) => total(rowOf(r).fetch) + total(rowOf(r).serve)
  for (let i = 0; i < n; i++) {
    const r = await once()
    totals.push(cpu(r))
    others.push(rowOf(r).other ?? 0)
    if (kept === undefined || cpu(r) < cpu(kept)) kept = r
  }
  rowOf(kept!).runs = totals
  rowOf(kept!).others = others
  return kept!
}

// ---- output ----

const f2 = (n: number) => n.toFixed(2)
const cpuCell = (c?: Cpu) => c ? `${f2(total(c))} (${f2(c.user)} / ${f2(c.sys)})` : ''

function table (title: string, gb: number, rows: Row[], floorPerGb: number): void {
  console.log(`\n${title}`)
  console.log('| method | wall s | job s | wire MB | CPU s fetch (user / sys) | CPU s serve (user / sys) | CPU s/GB fetch | serve | sum | × floor | peak RSS MiB fetch / serve | notes |')
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
  for (const r of rows) {
    const sum = (total(r.fetch) + total(r.serve)) / gb
    console.log(`| ${r.method} | ${f2(r.wall)} | ${r.job !== undefined ? f2(r.job) : ''} | ${r.wire !== undefined ? (r.wire / 1e6).toFixed(1) : ''} | ${cpuCell(r.fetch)} | ${cpuCell(r.serve)} | ${f2(total(r.fetch) / gb)} | ${f2(total(r.serve) / gb)} | ${f2(sum)} | ${f2(sum / floorPerGb)} | ${r.rss ? `${r.rss[0].toFixed(0)} / ${r.rss[1].toFixed(0)}` : ''} | ${r.note ?? ''} |`)
  }
  console.log('\nruns, total CPU s (fetch + serve) of each, and in brackets the CPU s the rest of the machine used meanwhile (the bench, the DHT nodes, other work: noise):')
  for (const r of rows) console.log(`- ${r.method}: ${r.runs.map((t, i) => `${f2(t)} (${f2(r.others[i] ?? 0)})`).join(', ')}`)
}

function threadTable (run: OsfarmRun): void {
  const names = [...new Set([...run.threads[0].keys(), ...run.threads[1].keys()])]
  const seconds = (name: string) => (run.threads[0].get(name)?.seconds ?? 0) + (run.threads[1].get(name)?.seconds ?? 0)
  names.sort((a, b) => seconds(b) - seconds(a))
  console.log('\nosfarm CPU by thread (threads of that kind, CPU s):')
  console.log('| thread | fetcher | server |')
  console.log('|---|---:|---:|')
  const cell = (t?: ThreadCpu) => t ? `${f2(t.seconds)}${t.count ? ` (${t.count})` : ''}` : ''
  for (const n of names) console.log(`| ${n} | ${cell(run.threads[0].get(n))} | ${cell(run.threads[1].get(n))} |`)
}

// ---- CPU profiles ----

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, hitCount?: number }
interface CpuProfile { nodes: ProfileNode[], startTime: number, endTime: number, samples: number[], timeDeltas: number[] }
interface Window { label: string, span: [number, number], threads: [Map<string, ThreadCpu>, Map<string, ThreadCpu>] }

// Self time (ms) by function within [from, to] (µs, CLOCK_MONOTONIC like process.hrtime) of
// every profile of one daemon, and each thread's sampled total.
async function selfTimes (dir: string, from: number, to: number): Promise<{ fns: Map<string, number>, threads: Map<string, number>, covered: boolean }> {
  const fns = new Map<string, number>()
  const threads = new Map<string, number>()
  let covered = false
  for (const file of (await fs.readdir(dir).catch(() => [] as string[])).filter(f => f.endsWith('.cpuprofile'))) {
    const prof = JSON.parse(await fs.readFile(path.join(dir, file), 'utf8')) as CpuProfile
    const byId = new Map(prof.nodes.map(n => [n.id, n]))
    const script = prof.nodes.map(n => n.callFrame.url).find(u => /(hash|block)-worker\.js$/.test(u))
    const thread = file.split('.')[4] === '0' ? 'main' : script ? path.basename(script, '.js') : `worker ${file.split('.')[4]}`
    if (prof.startTime <= to && prof.endTime >= from) covered = true
    let t = prof.startTime
    for (let i = 0; i < prof.samples.length; i++) {
      t += prof.timeDeltas[i]!
      const next = i + 1 < prof.samples.length ? t + prof.timeDeltas[i + 1]! : prof.endTime
      if (t < from || t > to) continue
      const node = byId.get(prof.samples[i]!)!
      const cf = node.callFrame
      if (cf.functionName === '(idle)') continue
      const ms = Math.max(0, next - t) / 1000
      const name = `${cf.functionName || '(anonymous)'}${cf.url ? ` ${path.basename(cf.url)}:${cf.lineNumber + 1}` : ''}`
      fns.set(name, (fns.get(name) ?? 0) + ms)
      threads.set(thread, (threads.get(thread) ?? 0) + ms)
    }
  }
  return { fns, threads, covered }
}

async function profileTables (windows: Window[]): Promise<void> {
  console.log(`\n## CPU profiles (--cpu-prof) of the kept osfarm runs; profiles in ${PROF_DIR}`)
  console.log('V8 samples a thread by the clock, so a function\'s ms are the time a thread was in it and not idle: on a core, waiting for one (2 cores, many threads) or blocked in a call (a read, a write). Beside each thread kind\'s sampled ms, its CPU s from /proc.')
  for (const w of windows) {
    const [fetcher, server] = await Promise.all(['h0', 'p1'].map(ns => selfTimes(path.join(PROF_DIR, ns), w.span[0], w.span[1])))
    console.log(`\n### ${w.label}`)
    if (!fetcher!.covered || !server!.covered) console.log('(a profile does not cover this run: its clock is not the bench\'s)')
    const perThread = (m: Map<string, number>, cpu: Map<string, ThreadCpu>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v.toFixed(0)} ms (CPU ${f2(cpu.get(k)?.seconds ?? 0)} s)`).join(', ')
    console.log(`sampled by thread: fetcher ${perThread(fetcher!.threads, w.threads[0])}; server ${perThread(server!.threads, w.threads[1])}`)
    const top = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).slice(0, 15)
    const a = top(fetcher!.fns)
    const b = top(server!.fns)
    console.log('| # | fetcher: function | ms | server: function | ms |')
    console.log('|---:|---|---:|---|---:|')
    for (let i = 0; i < Math.max(a.length, b.length); i++) console.log(`| ${i + 1} | ${a[i]?.[0] ?? ''} | ${a[i] ? a[i]![1].toFixed(0) : ''} | ${b[i]?.[0] ?? ''} | ${b[i] ? b[i]![1].toFixed(0) : ''} |`)
  }
}

// ---- the bench ----

async function stopHosts (hosts: Host[]): Promise<void> {
  for (const h of hosts) {
    h.client.close()
    if (h.proc.exitCode !== null) continue
    const exited = new Promise(resolve => h.proc.once('exit', resolve))
    h.proc.kill('SIGTERM')
    // A daemon writes its CPU profiles as it exits.
    await Promise.race([exited, sleep(60_000)])
  }
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the bench needs root (network namespaces, mounts)')
  const t00 = performance.now()
  const build = await execa('bash', [path.join(ROOT, 'scripts/bench/debian-images.sh')], { env: { OUT: IMAGES }, reject: false, timeout: 30 * 60_000 })
  if (build.exitCode !== 0) throw new Error(`building the Debian images failed: ${build.stderr}`)
  const S = path.join(IMAGES, 'minbase.img')
  const T = path.join(IMAGES, 'ssh.img')
  await fs.mkdir(WORK, { recursive: true })
  const hasher = new BlockHasher()
  let mS: Manifest, mT: Manifest
  try {
    mS = await hasher.indexFile(S)
    mT = await hasher.indexFile(T)
  } finally {
    await hasher.close()
  }
  const cases: Record<CaseName, CaseData> = {} as Record<CaseName, CaseData>
  for (const name of ['whole', 'delta'] as const) {
    const records = absentRecords(mT, name === 'delta' ? mS : undefined)
    const listFile = path.join(WORK, `${name}.list`)
    await fs.writeFile(listFile, records)
    const blocks = records.length / (4 + HASH_BYTES)
    const title = name === 'whole' ? 'whole image: the fetcher holds nothing' : 'delta: the fetcher holds S = minbase.img'
    cases[name] = { name, title, records, blocks, listFile }
  }
  const size = mT.size

  if (PROF) {
    await fs.rm(PROF_DIR, { recursive: true, force: true })
    for (const ns of ['h0', 'p1']) await fs.mkdir(path.join(PROF_DIR, ns), { recursive: true })
  }
  const nodeFlags = process.env.BENCH_NODE_FLAGS ?? ''
  const startHost = async (ns: string, addr: string): Promise<Host> => {
    process.env.BENCH_NODE_FLAGS = [nodeFlags, ...PROF ? ['--cpu-prof', `--cpu-prof-dir=${path.join(PROF_DIR, ns)}`] : []].join(' ')
    try {
      return await lab.startHost(ns, addr, path.join(XFS, ns))
    } finally {
      process.env.BENCH_NODE_FLAGS = nodeFlags
    }
  }

  await lab.up(1, RATES[0]!)
  unmount = await mountXfs(XFS_IMG, XFS, '16G')
  const server = await startHost('p1', PEER)
  const fetcher = await startHost('h0', HUB)
  const labels: [ThreadLabels, ThreadLabels] = [new ThreadLabels(fetcher.proc.pid!), new ThreadLabels(server.proc.pid!)]
  for (const l of labels) await l.markStartup()
  await fleet([server, fetcher])
  const hasLanes = (await lanes(fetcher)) !== undefined
  const lane = TCP_LANES && hasLanes ? await eventually('the TCP lane', async () => (await lanes(fetcher))?.[0], { timeoutMs: 20_000, intervalMs: 200 }).catch(() => undefined) : undefined
  const imported = await waitJob(server, (await server.client.call('image.import', { path: T, name: 'T' })).id)
  if (imported.state !== 'done') throw new Error(`import of T failed: ${imported.error?.message}`)
  const root = (imported.result as { root: string }).root
  const conf = path.join(WORK, 'rsyncd.conf')
  await fs.writeFile(conf, `use chroot = no\n[m]\npath = ${IMAGES}\nread only = yes\n`)
  const rsyncd = run('p1', 'rsync', ['--daemon', '--no-detach', `--config=${conf}`, `--address=${PEER}`, `--port=${RSYNC_PORT}`])
  await sleep(500)

  const git = async (...args: string[]) => { const r = await execa('git', ['-C', ROOT, ...args], { reject: false }); return r.exitCode === 0 ? r.stdout : undefined }
  const head = await git('rev-parse', '--short', 'HEAD')
  const dirty = (await git('status', '--porcelain', '--', 'daemon', 'protocol'))?.split('\n').filter(Boolean).length
  console.log(`\n# bench:cpu: T = ssh.img, S = minbase.img; the fetcher in ${PREFIX}-h0, the server in ${PREFIX}-p1; runs of each row: ${RUNS}, least total CPU kept${PROF ? '; daemons under --cpu-prof' : ''}`)
  console.log(`blocks travel ${lane ? `over a TCP lane (${lane.address})` : `over the swarm connection (UDX)${!hasLanes ? ': this osfarmd has no TCP lanes' : TCP_LANES ? ': the TCP lane did not come up in 20 s' : ', TCP lanes off (BENCH_TCP_LANES=0)'}`}`)
  console.log(`(${head ? `code: ${head}${dirty ? `, with ${dirty} files of daemon/ and protocol/ changed but not committed` : ''}; ` : ''}${load()} at the start; GB = the absent blocks delivered × 4096 bytes, 1e9 bytes; × floor = the row's CPU s/GB over the first floor's; one fetch before the first row, not counted, warms both daemons)`)
  // Warms both daemons (and makes sure the fetcher knows T's advert).
  await osfarmRun(fetcher, server, labels, root)
  const windows: Window[] = []
  const floorRows = process.env.BENCH_FLOOR_LAYERS === '0' ? [FLOOR_ROWS[0]!, FLOOR_ROWS[FLOOR_ROWS.length - 1]!] : FLOOR_ROWS

  for (const name of CASES) {
    const c = cases[name]
    const holdsS = (await fetcher.client.call('image.list', {})).filter(i => i.name === 'S')
    if (name === 'delta' && !holdsS.length) {
      const j = await waitJob(fetcher, (await fetcher.client.call('image.import', { path: S, name: 'S' })).id)
      if (j.state !== 'done') throw new Error(`import of S failed: ${j.error?.message}`)
    }
    if (name === 'whole') for (const i of holdsS) await fetcher.client.call('image.remove', { id: i.id })
    const gb = c.blocks * BLOCK / GB
    for (const rate of RATES) {
      await lab.lab('rate', rate)
      const osf = await best(RUNS, () => osfarmRun(fetcher, server, labels, root), r => r.row)
      const rows: Row[] = [osf.row]
      if (osf.stats.received !== c.blocks) osf.row.note += ` (the floor moves ${c.blocks})`
      for (const f of floorRows) {
        const r = await best(RUNS, () => floorRun(c, T, f.flags, f.write, size), r => r)
        r.method = f.method
        rows.push(r)
      }
      if (process.env.BENCH_RSYNC !== '0') rows.push(await best(RUNS, () => rsyncRun(rsyncd, name, S, T), r => r))
      const floorPerGb = (total(rows[1]!.fetch) + total(rows[1]!.serve)) / gb
      const label = `${c.title}, ${rate === 'none' ? 'unshaped' : rate}`
      table(`### ${label}: ${c.blocks} blocks absent, ${(c.blocks * BLOCK / 1e6).toFixed(1)} MB raw (${load()})`, gb, rows, floorPerGb)
      const s = osf.stats
      console.log(`\nosfarm phases (ms): ${Object.entries(s.phases).map(([k, v]) => `${k} ${v}`).join(', ')}; last block at ${s.remoteMs} ms into transfer; in place ${s.inPlace}, local ${s.copiedLocal} (${s.clonedLocal ?? 0} cloned), received ${s.received}, payload ${(s.wireBytes / 1e6).toFixed(1)} MB, manifest ${(s.manifestBytes / 1e6).toFixed(2)} MB`)
      threadTable(osf)
      windows.push({ label, span: osf.window, threads: osf.threads })
    }
  }
  rsyncd.p.kill('SIGTERM')
  await stopHosts([fetcher, server])
  if (PROF) await profileTables(windows)
  console.log(`\n(bench:cpu took ${((performance.now() - t00) / 1000).toFixed(0)} s)`)
}

async function cleanup (): Promise<void> {
  await stopHosts(lab.hosts).catch(() => {})
  await lab.down().catch(() => {})
  await fs.rm(WORK, { recursive: true, force: true })
  if (!unmount) return
  for (let i = 0; i < 10; i++) {
    // Killed processes may hold files on it for a moment.
    const r = await execa('umount', [XFS], { reject: false })
    if (r.exitCode === 0 || /not mounted/.test(r.stderr)) break
    await sleep(500)
  }
  await unmount()
  await fs.rmdir(XFS).catch(() => {})
}

let exiting = false
function exit (code: number): void {
  if (exiting) return
  exiting = true
  cleanup().finally(() => process.exit(code))
}
process.once('SIGINT', () => exit(130))
process.once('SIGTERM', () => exit(143))
setTimeout(() => { console.error(`bench:cpu: timed out after ${BENCH_MS / 60_000} min`); exit(1) }, BENCH_MS).unref()
main().then(() => exit(0), err => { console.error(err); exit(1) })
