// The main job, shown on one host: a fleet of two osfarmd daemons on the embedded default (file
// store, temp data dirs), joined through their own DHT bootstrap nodes on 127.0.0.1. Host A builds
// Debian bookworm minbase and then minbase+openssh-server (the base layer reused); host B fetches
// minbase (everything comes from A), then minbase+openssh, which it mostly already holds: only
// the absent blocks cross, and the figures say so.

import fs from 'node:fs/promises'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { OSFARMD, startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples')
const MB = 1e6

function step (text: string): void {
  console.log(`\n== ${text}`)
}

async function timed<T> (fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = process.hrtime.bigint()
  const r = await fn()
  return [r, Number(process.hrtime.bigint() - t0) / 1e9]
}

// The fleet's own DHT bootstrap nodes (three: with a single node, peers on one host do not find
// each other), so the fleet needs nothing outside this host.
async function startDht (nodes = 3): Promise<{ address: string, stop: () => void }> {
  const procs: ChildProcess[] = []
  const addresses: string[] = []
  for (let i = 0; i < nodes; i++) {
    // Port 0: any free port (each node prints the one it bound).
    const proc = spawn(process.execPath, [OSFARMD, 'dht', '--host', '127.0.0.1', '--port', '0', ...(addresses.length ? ['--bootstrap', addresses.join(',')] : [])], { stdio: ['ignore', 'pipe', 'inherit'] })
    procs.push(proc)
    addresses.push(await new Promise<string>((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`osfarmd dht did not start: ${out}`)), 15_000)
      proc.stdout!.on('data', d => {
        out += d
        const m = /osfarmd dht ready (\S+)/.exec(out)
        if (m) { clearTimeout(timer); resolve(m[1]!) }
      })
    }))
  }
  return { address: addresses.join(','), stop: () => { for (const p of procs) p.kill('SIGTERM') } }
}

async function build (d: TestDaemon, spec: string): Promise<any> {
  const [r, s] = await timed(() => d.ctlJson('build', path.join(EXAMPLES, spec), '--wait'))
  const layers = r.layers.map((l: any) => `${l.step}${l.cached ? ' (cached)' : ` ${l.seconds.toFixed(1)} s`}`).join(' → ')
  console.log(`${r.image.name}: ${s.toFixed(1)} s; layers ${layers}; root ${r.image.root.slice(0, 16)}…`)
  return r.image
}

async function fetch (d: TestDaemon, name: string): Promise<void> {
  const [r, s] = await timed(() => d.ctlJson('fetch', name))
  const st = r.stats
  const nonZero = st.blocks - st.zeroBlocks
  console.log(`${name}: ${s.toFixed(2)} s, ${st.blocks} blocks (${st.zeroBlocks} zero, never sent)`)
  console.log(`  reused in place ${st.inPlace}, copied locally ${st.copiedLocal}, received from peers ${st.received} of ${nonZero} non-zero blocks`)
  console.log(`  on the wire ${(st.wireBytes / MB).toFixed(1)} MB (blocks ${(st.rawBytes / MB).toFixed(1)} MB before compression) + manifest ${(st.manifestBytes / MB).toFixed(2)} MB`)
  console.log(`  observed rate ${(nonZero * r.image.blockSize / MB / s).toFixed(0)} MB/s of image data`)
}

async function main (): Promise<void> {
  const dir = await tempDir('osfarm-demo-')
  const dht = await startDht()
  const daemons: TestDaemon[] = []
  try {
    for (const host of ['a', 'b']) daemons.push(await startDaemon({ dir: await fs.mkdir(path.join(dir, host), { recursive: true }).then(() => path.join(dir, host)) }))
    const [a, b] = daemons as [TestDaemon, TestDaemon]
    console.log(`host A: osfarmd pid ${a.proc.pid}, ${a.dataDir}\nhost B: osfarmd pid ${b.proc.pid}, ${b.dataDir}\nfleet DHT bootstrap: ${dht.address}`)

    step('a fleet of two: osfarmctl fleet init on A, join on B, allow each other')
    const fa = await a.ctlJson('fleet', 'init', '--bootstrap', dht.address, '--dht-host', '127.0.0.1')
    const fb = await b.ctlJson('fleet', 'init', '--secret', fa.secret, '--bootstrap', dht.address, '--dht-host', '127.0.0.1')
    for (const d of daemons) for (const k of [fa.publicKey, fb.publicKey]) await d.ctlJson('fleet', 'allow', k)
    console.log(`A ${fa.publicKey.slice(0, 16)}…, B ${fb.publicKey.slice(0, 16)}…`)

    step('A builds Debian bookworm minbase (mmdebstrap from the host\'s apt mirror)')
    await build(a, 'bookworm-minbase.json')
    step('A builds minbase + openssh-server: the base layer comes from the cache')
    await build(a, 'bookworm-ssh.json')
    step('A asks for minbase + openssh-server again: answered from the cache')
    await build(a, 'bookworm-ssh.json')

    step('B fetches bookworm-minbase: B holds nothing yet, every block comes from A')
    await fetch(b, 'bookworm-minbase')
    step('B fetches bookworm-ssh: B holds minbase, so only the absent blocks cross')
    await fetch(b, 'bookworm-ssh')

    step('osfarmctl image ls on B')
    console.log((await b.ctl('image', 'ls')).stdout.trimEnd())
  } finally {
    for (const d of daemons) await d.stop()
    dht.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exit(1) })
