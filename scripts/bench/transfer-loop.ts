// A loopback two-daemon transfer run for profiling: a HyperDHT testnet on 127.0.0.1, two real
// daemons with their data on a loop-mounted XFS (reflink), S imported on both and T on A, then
// B fetches T (BENCH_RUNS times). No shaping: it shows where CPU goes when the link is not the
// limit. PROF=DIR writes --cpu-prof profiles of both daemons there. Needs root (the mount).
// Env: OUT (images, default /var/tmp/osfarm-bench), PERF_DIR (default /var/tmp/osfarm-perf),
// T=ssh|ssh-layer, BENCH_RUNS=1, WHOLE=1 (B holds no S: the whole image comes over the wire).

import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import createTestnet from 'hyperdht/testnet.js'
import { startDaemon, type TestDaemon } from '../../testing/daemon.js'

const IMAGES = process.env.OUT ?? '/var/tmp/osfarm-bench'
const DIR = process.env.PERF_DIR ?? '/var/tmp/osfarm-perf'
const MNT = path.join(DIR, 'xfs')
const RUNS = Number(process.env.BENCH_RUNS ?? 1)
const T = process.env.T ?? 'ssh'

async function main (): Promise<void> {
  await fs.mkdir(MNT, { recursive: true })
  await execa('umount', [MNT], { reject: false })
  await execa('truncate', ['-s', '16G', path.join(DIR, 'xfs.img')])
  await execa('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', path.join(DIR, 'xfs.img')])
  await execa('mount', ['-o', 'loop', path.join(DIR, 'xfs.img'), MNT])
  const testnet = await createTestnet(3, { host: '127.0.0.1' })
  const bootstrap = testnet.bootstrap.map(b => `${b.host}:${b.port}`).join(',')
  const nodeArgs = process.env.PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PROF}`] : []
  const daemons: TestDaemon[] = []
  try {
    for (const name of ['a', 'b']) {
      const dir = path.join(MNT, name)
      await fs.mkdir(dir, { recursive: true })
      daemons.push(await startDaemon({ dir, nodeArgs, args: ['--log-level', 'info'] }))
    }
    const [a, b] = daemons as [TestDaemon, TestDaemon]
    const first = await a.ctlJson('fleet', 'init', '--bootstrap', bootstrap, '--dht-host', '127.0.0.1')
    const second = await b.ctlJson('fleet', 'init', '--secret', first.secret, '--bootstrap', bootstrap, '--dht-host', '127.0.0.1')
    for (const d of daemons) for (const k of [first.publicKey, second.publicKey]) await d.ctlJson('fleet', 'allow', k)
    // WHOLE=1: B holds nothing, so every block of T comes over the wire.
    for (const d of process.env.WHOLE ? [a] : daemons) await d.ctlJson('image', 'import', path.join(IMAGES, 'minbase.img'), '--name', 'S')
    await a.ctlJson('image', 'import', path.join(IMAGES, `${T}.img`), '--name', 'T')
    for (let end = Date.now() + 60_000; (await b.ctlJson('peer', 'ls')).length < 1;) {
      if (Date.now() > end) throw new Error('no peer')
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    for (let r = 0; r < RUNS; r++) {
      await execa('sync')
      const cpu0 = await Promise.all(daemons.map(d => cpuMs(d.proc.pid!)))
      const th0 = await Promise.all(daemons.map(d => threadMs(d.proc.pid!)))
      const t0 = performance.now()
      const res = await b.ctlJson('fetch', 'T', '--from', first.publicKey)
      const s = res.stats
      const cpu1 = await Promise.all(daemons.map(d => cpuMs(d.proc.pid!)))
      console.log(`  cpu ms (user+sys, all threads): serving ${cpu1[0]! - cpu0[0]!}, fetching ${cpu1[1]! - cpu0[1]!}`)
      const th1 = await Promise.all(daemons.map(d => threadMs(d.proc.pid!)))
      for (const [k, who] of ['serving', 'fetching'].entries()) {
        const by: Record<string, number> = {}
        for (const [tid, t] of th1[k]!) { const d = t.ms - (th0[k]!.get(tid)?.ms ?? 0); if (d > 0) by[t.name] = (by[t.name] ?? 0) + d }
        console.log(`    ${who} by thread: ${Object.entries(by).sort((a, b) => b[1] - a[1]).map(([n, v]) => `${n} ${v}`).join(', ')}`)
      }
      console.log(`run ${r}: wall ${((performance.now() - t0) / 1000).toFixed(2)} s, job ${(s.elapsedMs / 1000).toFixed(2)} s, phases ${JSON.stringify(s.phases)}, remoteMs ${s.remoteMs}, in place ${s.inPlace}, local ${s.copiedLocal} (cloned ${s.clonedLocal ?? 0}), received ${s.received}, wire ${(s.wireBytes / 1e6).toFixed(1)} MB, manifest ${(s.manifestBytes / 1e6).toFixed(2)} MB`)
      await b.ctlJson('image', 'rm', res.image.id)
    }
  } finally {
    for (const d of daemons) await d.stop('SIGTERM')
    await testnet.destroy()
    await execa('umount', [MNT], { reject: false })
    await fs.rm(path.join(DIR, 'xfs.img'), { force: true })
  }
}

// CPU ms per thread (tid → name, ms).
async function threadMs (pid: number): Promise<Map<string, { name: string, ms: number }>> {
  const out = new Map<string, { name: string, ms: number }>()
  for (const tid of await fs.readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const st = await fs.readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')
    if (!st) continue
    const name = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'))
    const f = st.slice(st.lastIndexOf(') ') + 2).split(' ')
    out.set(tid, { name: tid === String(pid) ? 'main' : `${name}-${tid}`, ms: (Number(f[11]) + Number(f[12])) * 10 })
  }
  return out
}

// CPU time a process has used (all threads), in ms.
async function cpuMs (pid: number): Promise<number> {
  const f = (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')
  return (Number(f[11]) + Number(f[12])) * 10
}

main().then(() => process.exit(0), err => { console.error(err); process.exit(1) })
