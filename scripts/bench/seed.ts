// npm run bench:seed — a roll-out on the network lab: 1 source and 6 receivers, each link shaped
// to 100 Mbit (both ways). Times, from the moment the policy is added until the host holds the
// image: one receiver alone; all 6 at once through a seed policy (they swarm: each serves what
// it has); and a central server, the source sending to each receiver in turn (plain fetches
// from the source only). Target: all 6 within 1.3× the single transfer.
//
// The image is the transfer bench's real Debian image (scripts/bench/debian-images.sh, 2 GiB,
// ~255 MB of data), or BENCH_IMAGE. Its own lab (LAB_PREFIX=osfs), so it runs beside the
// transfer bench. Needs root. Env: BENCH_RATE=100mbit BENCH_RECEIVERS=6 BENCH_SKIP_CENTRAL=1

import fs from 'node:fs/promises'
import path from 'node:path'
import os from 'node:os'
import { execa } from 'execa'
import type { FetchResult, JobInfo } from '../../protocol/rpc.js'
import { Lab, ROOT, cpuSeconds, load, waitJob, type Host } from './lab-hosts.js'

const IMAGES = process.env.OUT ?? '/var/tmp/osfarm-bench'
const WORK = process.env.BENCH_WORK ?? '/var/tmp/osfarm-seed-bench'
const RATE = process.env.BENCH_RATE ?? '100mbit'
const RECEIVERS = Number(process.env.BENCH_RECEIVERS ?? 6)
const HOLD_TIMEOUT_MS = 15 * 60_000
const NAME = 'bench-app'

interface Arrival { host: Host, seconds: number, job?: JobInfo }

async function holds (h: Host, root: string): Promise<boolean> {
  return (await h.client.call('image.list', {})).some(i => i.root === root)
}

// Adds the policy on each host at once and times each until it holds the image.
async function rollOut (hosts: Host[], root: string): Promise<{ arrivals: Arrival[], seconds: number }> {
  const t0 = performance.now()
  const t0Wall = Date.now() - 1000
  await Promise.all(hosts.map(h => h.client.call('seed.add', { match: NAME })))
  const pending = new Set(hosts)
  const arrivals: Arrival[] = []
  const end = Date.now() + HOLD_TIMEOUT_MS
  while (pending.size) {
    if (Date.now() > end) throw new Error(`${pending.size} host(s) did not get the image in time`)
    await Promise.all([...pending].map(async h => {
      if (!await holds(h, root)) return
      pending.delete(h)
      arrivals.push({ host: h, seconds: (performance.now() - t0) / 1000 })
    }))
    if (pending.size) await new Promise(resolve => setTimeout(resolve, 200))
  }
  const seconds = (performance.now() - t0) / 1000
  // The image is registered a moment before its job is marked done.
  for (const a of arrivals) {
    for (let i = 0; i < 50 && !a.job; i++) {
      const jobs = await a.host.client.call('job.list', {})
      a.job = jobs.filter(j => j.kind === 'fetch' && j.priority === 'background' && j.state === 'done' && Date.parse(j.createdAt) >= t0Wall).pop()
      if (!a.job) await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
  return { arrivals, seconds }
}

async function release (hosts: Host[], root: string): Promise<void> {
  for (const h of hosts) for (const p of await h.client.call('seed.list', {})) await h.client.call('seed.remove', { id: p.id })
  const end = Date.now() + 60_000
  for (const h of hosts) {
    while (await holds(h, root)) {
      if (Date.now() > end) throw new Error(`${h.ns} did not release the image`)
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
}

function fromPeers (job: JobInfo | undefined, source: Host): { source: number, peers: number } {
  const s = (job?.result as FetchResult | undefined)?.stats
  let src = 0
  let other = 0
  for (const [key, p] of Object.entries(s?.peers ?? {})) {
    if (key === source.key) src += p.rawBytes
    else other += p.rawBytes
  }
  return { source: src, peers: other }
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the bench needs root (network namespaces)')
  let image = process.env.BENCH_IMAGE
  if (!image) {
    const build = await execa('bash', [path.join(ROOT, 'scripts/bench/debian-images.sh')], { env: { OUT: IMAGES }, reject: false, timeout: 30 * 60_000 })
    if (build.exitCode !== 0) throw new Error(`building the Debian images failed: ${build.stderr}`)
    image = path.join(IMAGES, 'ssh.img')
  }
  const lab = new Lab('osfs')
  const stop = () => lab.down().finally(() => process.exit(1))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  try {
    await fs.mkdir(WORK, { recursive: true })
    await lab.up(RECEIVERS + 1, RATE)
    const source = await lab.startHost('p1', '10.201.1.2', path.join(WORK, 'p1'))
    const receivers: Host[] = []
    for (let i = 2; i <= RECEIVERS + 1; i++) receivers.push(await lab.startHost(`p${i}`, `10.201.${i}.2`, path.join(WORK, `p${i}`)))
    await lab.fleet([source, ...receivers])
    const imported = await waitJob(source, (await source.client.call('image.import', { path: image, name: NAME })).id)
    if (imported.state !== 'done') throw new Error(`import failed: ${imported.error?.message}`)
    const img = imported.result as { root: string, size: number, blocks: number, zeroBlocks: number, blockSize: number }
    const data = (img.blocks - img.zeroBlocks) * img.blockSize
    console.log(`\n## Seed roll-out: 1 source + ${RECEIVERS} receivers, each link ${RATE}; image ${path.basename(image)}: ${(img.size / 2 ** 30).toFixed(1)} GiB, ${(data / 1e6).toFixed(1)} MB of data (zstd on the wire)`)
    console.log(`(${load()} at the start)`)

    // 1. One receiver alone.
    const all = [source, ...receivers]
    let up0 = await lab.uploadBytes(1)
    let cpu0 = await cpuSeconds(all)
    const single = await rollOut([receivers[0]!], img.root)
    const singleUp = await lab.uploadBytes(1) - up0
    const singleCpu = await cpuSeconds(all) - cpu0
    console.log(`single done in ${single.seconds.toFixed(2)} s (${load()})`)
    await release([receivers[0]!], img.root)

    // 2. All receivers through one policy each, at once.
    up0 = await lab.uploadBytes(1)
    cpu0 = await cpuSeconds(all)
    const drops0 = await Promise.all(receivers.map((_, k) => lab.drops(k + 2)))
    const swarm = await rollOut(receivers, img.root)
    const drops = (await Promise.all(receivers.map((_, k) => lab.drops(k + 2)))).map((d, k) => d - drops0[k]!)
    console.log(`packets dropped by the shapers on the receivers' downlinks during the swarm: ${drops.join(', ')}`)
    const swarmUp = await lab.uploadBytes(1) - up0
    const swarmCpu = await cpuSeconds(all) - cpu0
    console.log(`swarm done in ${swarm.seconds.toFixed(2)} s (${load()})`)
    const perHost = swarm.arrivals.sort((a, b) => a.seconds - b.seconds).map(a => {
      const f = fromPeers(a.job, source)
      const share = f.source + f.peers ? Math.round(100 * f.peers / (f.source + f.peers)) : 0
      return `${a.host.ns} ${a.seconds.toFixed(1)} s (${share}% from peers)`
    })
    await release(receivers, img.root)

    // 3. A central server: the source sends to each receiver in turn.
    let central: { seconds: number, up: number, each: number[] } | undefined
    if (!process.env.BENCH_SKIP_CENTRAL) {
      up0 = await lab.uploadBytes(1)
      const t0 = performance.now()
      const each: number[] = []
      for (const r of receivers) {
        const t1 = performance.now()
        const job = await waitJob(r, (await r.client.call('image.fetch', { ref: img.root, from: source.key })).id)
        if (job.state !== 'done') throw new Error(`fetch on ${r.ns} failed: ${job.error?.message}`)
        each.push((performance.now() - t1) / 1000)
      }
      central = { seconds: (performance.now() - t0) / 1000, up: await lab.uploadBytes(1) - up0, each }
      for (const r of receivers) for (const i of await r.client.call('image.list', {})) if (i.root === img.root) await r.client.call('image.remove', { id: i.id })
    }

    console.log('\n| scenario | wall s | × single | source upload MB | notes |')
    console.log('|---|---:|---:|---:|---|')
    console.log(`| one receiver alone | ${single.seconds.toFixed(2)} | 1.00 | ${(singleUp / 1e6).toFixed(1)} | ${(data / 1e6 / single.seconds).toFixed(1)} MB/s of image data; daemons used ${singleCpu.toFixed(1)} CPU s |`)
    console.log(`| all ${RECEIVERS} through a seed policy (swarm) | ${swarm.seconds.toFixed(2)} | ${(swarm.seconds / single.seconds).toFixed(2)} | ${(swarmUp / 1e6).toFixed(1)} | first ${swarm.arrivals[0]!.seconds.toFixed(1)} s; ${perHost.join('; ')}; daemons used ${swarmCpu.toFixed(1)} CPU s (${(swarmCpu / swarm.seconds).toFixed(2)} of ${os.cpus().length} cores) |`)
    if (central) console.log(`| source to each in turn (central server) | ${central.seconds.toFixed(2)} | ${(central.seconds / single.seconds).toFixed(2)} | ${(central.up / 1e6).toFixed(1)} | each ${central.each.map(s => s.toFixed(1)).join(', ')} s |`)
    const ratio = swarm.seconds / single.seconds
    console.log(`\nall ${RECEIVERS} within ${ratio.toFixed(2)}× the single transfer (target ≤ 1.3×): ${ratio <= 1.3 ? 'met' : 'NOT met'}; the source uploaded ${(swarmUp / singleUp).toFixed(2)}× what one receiver needs${central ? `; ${(central.seconds / swarm.seconds).toFixed(1)}× faster than a central server` : ''}`)
    console.log(`(${load()} at the end)`)
  } finally {
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
    await lab.down()
  }
}

main().then(() => process.exit(0), err => {
  console.error(err)
  process.exit(1)
})
