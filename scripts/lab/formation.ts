// Fleet formation on the network lab: fresh daemons, one per peer namespace, join a fleet where
// all allow all (direct peers, their own --dht-host, three DHT nodes on the hub), and this
// measures how long until every daemon has a session with every other. No restarts: a fleet
// that has not formed within FORM_LIMIT_S counts as failed.
//
//   node dist/scripts/lab/formation.js            (root; lab LAB_PREFIX, default osfx)
//
// Env: FORM_SIZES=2,4  FORM_RUNS=5  FORM_LIMIT_S=60  FORM_SLOW_S=10  FORM_RATE=100mbit
// FORM_LOGS=DIR: the daemons' logs (and `ss -uapn` of each namespace) of slow runs go there.

import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { Lab, type Host } from '../bench/lab-hosts.js'

const PREFIX = process.env.LAB_PREFIX ?? 'osfx'
const SIZES = (process.env.FORM_SIZES ?? '2,4').split(',').map(Number)
const RUNS = Number(process.env.FORM_RUNS ?? 5)
const LIMIT_MS = Number(process.env.FORM_LIMIT_S ?? 60) * 1000
const SLOW_MS = Number(process.env.FORM_SLOW_S ?? 10) * 1000
const RATE = process.env.FORM_RATE ?? '100mbit'
const LOGS = process.env.FORM_LOGS
const WORK = path.join('/tmp', `${PREFIX}-formation`)

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

async function stopHosts (lab: Lab, hosts: Host[]): Promise<void> {
  for (const h of hosts) {
    h.client.close()
    const exited = new Promise(resolve => h.proc.once('exit', resolve))
    h.proc.kill('SIGTERM')
    await Promise.race([exited, sleep(10_000)])
    h.proc.kill('SIGKILL')
    lab.hosts.splice(lab.hosts.indexOf(h), 1)
  }
}

async function ss (lab: Lab, h: Host): Promise<string> {
  const r = await execa('ip', ['netns', 'exec', `${lab.prefix}-${h.ns}`, 'ss', '-uapn'], { reject: false, timeout: 10_000 })
  return r.stdout
}

// One formation: fresh daemons, fleet init on each, then polls until all see all (bounded).
async function form (lab: Lab, n: number, run: number): Promise<{ ms: number, formed: boolean, firstMs: number[] }> {
  const hosts: Host[] = []
  for (let i = 1; i <= n; i++) hosts.push(await lab.startHost(`p${i}`, `10.201.${i}.2`, path.join(WORK, `p${i}`)))
  for (const h of hosts) h.key = (await h.client.call('fleet.show', {})).publicKey
  const start = Date.now()
  let secret = ''
  for (const h of hosts) {
    const peers = hosts.filter(o => o !== h).map(o => o.key)
    const info = await h.client.call('fleet.init', { ...(secret ? { secret } : {}), bootstrap: ['10.201.1.1:49737', '10.201.1.1:49738', '10.201.1.1:49739'], dhtHost: h.addr, peers })
    secret ||= info.secret!
  }
  let formed = false
  let snap = ''
  // Per host: when it first had every peer (ms after start).
  const firstMs = hosts.map(() => -1)
  while (Date.now() - start < LIMIT_MS) {
    const counts = await Promise.all(hosts.map(h => h.client.call('peer.list', {}).then(l => l.length)))
    counts.forEach((c, i) => { if (c >= n - 1 && firstMs[i]! < 0) firstMs[i] = Date.now() - start })
    if (counts.every(c => c >= n - 1)) { formed = true; break }
    if (LOGS && !snap && Date.now() - start > SLOW_MS) {
      for (const h of hosts) snap += `== ${h.ns} ${new Date().toISOString()} peers ${counts[hosts.indexOf(h)]}\n${await ss(lab, h)}\n`
    }
    await sleep(200)
  }
  const ms = Date.now() - start
  if (LOGS && (!formed || ms > SLOW_MS)) {
    const dir = path.join(LOGS, `n${n}-run${run}`)
    await fs.mkdir(dir, { recursive: true })
    await fs.writeFile(path.join(dir, 'ss.txt'), snap)
    for (const h of hosts) await fs.copyFile(path.join(h.dir, 'osfarmd.log'), path.join(dir, `${h.ns}.log`)).catch(() => {})
    await fs.writeFile(path.join(dir, 'keys.txt'), hosts.map(h => `${h.ns} ${h.addr} ${h.key}`).join('\n') + `\nstart ${new Date(start).toISOString()}\n`)
  }
  await stopHosts(lab, hosts)
  return { ms, formed, firstMs }
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces)')
  const lab = new Lab(PREFIX)
  await fs.rm(WORK, { recursive: true, force: true })
  await lab.up(Math.max(...SIZES), RATE)
  try {
    // The DHT nodes find each other before any host announces.
    await sleep(3000)
    for (const n of SIZES) {
      const times: number[] = []
      let slow = 0
      let failed = 0
      for (let run = 1; run <= RUNS; run++) {
        const r = await form(lab, n, run)
        times.push(r.ms)
        if (!r.formed) failed++
        if (!r.formed || r.ms > SLOW_MS) slow++
        console.log(`n=${n} run ${run}: ${r.formed ? 'formed' : 'NOT formed'} in ${(r.ms / 1000).toFixed(1)} s (per host ${r.firstMs.map(t => t < 0 ? '-' : (t / 1000).toFixed(1)).join(' ')})`)
      }
      const sorted = [...times].sort((a, b) => a - b)
      console.log(`n=${n}: ${RUNS} runs, median ${(sorted[Math.floor(sorted.length / 2)]! / 1000).toFixed(1)} s, max ${(sorted[sorted.length - 1]! / 1000).toFixed(1)} s, over ${SLOW_MS / 1000} s: ${slow}, not formed in ${LIMIT_MS / 1000} s: ${failed}`)
    }
  } finally {
    await lab.down()
    await fs.rm(WORK, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exitCode = 1 })
