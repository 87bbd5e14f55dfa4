// npm run sim:fleet -- --hosts N [--rate R] [--latency MS] [--churn P] [--json] — a roll-out
// of one image from one source to N - 1 receivers, simulated in virtual time (fleet-sim.ts).
// Also: --mesh full|topic, --max-peers N, --no-relay, --wire-ratio X, --image BYTES,
// --data BYTES, --seed N. Rates take k/m/g suffixes in bits per second (1gbit, 100mbit).

import { parseArgs } from 'node:util'
import { DEFAULTS, simulate, type SimOptions } from './fleet-sim.js'

function rate (s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit)?$/i.exec(s.trim())
  if (!m) throw new Error(`--rate: expected a rate such as 1gbit or 100mbit, got ${JSON.stringify(s)}`)
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g']
  return Number(m[1]) * mult / 8
}

function num (name: string, s: string | undefined, min: number, max: number): number | undefined {
  if (s === undefined) return undefined
  const n = Number(s)
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name}: expected a number from ${min} to ${max}, got ${JSON.stringify(s)}`)
  return n
}

function main (): void {
  const { values } = parseArgs({
    options: {
      hosts: { type: 'string' },
      rate: { type: 'string' },
      latency: { type: 'string' },
      churn: { type: 'string' },
      json: { type: 'boolean' },
      mesh: { type: 'string' },
      'max-peers': { type: 'string' },
      'no-relay': { type: 'boolean' },
      'wire-ratio': { type: 'string' },
      image: { type: 'string' },
      data: { type: 'string' },
      seed: { type: 'string' },
      single: { type: 'boolean', default: true }
    },
    allowPositionals: false
  })
  if (values.mesh !== undefined && values.mesh !== 'full' && values.mesh !== 'topic') throw new Error('--mesh: full or topic')
  const opts: Partial<SimOptions> = {}
  const set = <K extends keyof SimOptions>(k: K, v: SimOptions[K] | undefined) => { if (v !== undefined) opts[k] = v }
  set('hosts', num('hosts', values.hosts, 2, 100_000))
  if (opts.hosts !== undefined && !Number.isInteger(opts.hosts)) throw new Error('--hosts: a whole number')
  set('rate', values.rate === undefined ? undefined : rate(values.rate))
  set('latencyMs', num('latency', values.latency, 0, 10_000))
  set('churn', num('churn', values.churn, 0, 0.9))
  set('mesh', values.mesh as SimOptions['mesh'] | undefined)
  set('maxPeers', num('max-peers', values['max-peers'], 1, 10_000))
  set('wireRatio', num('wire-ratio', values['wire-ratio'], 0.01, 1))
  set('imageBytes', num('image', values.image, 4096, 2 ** 44))
  set('dataBytes', num('data', values.data, 4096, 2 ** 44))
  set('seed', num('seed', values.seed, 1, 2 ** 32 - 1))
  if (values['no-relay']) opts.relayAdverts = false
  const o = { ...DEFAULTS, ...opts }
  if (o.dataBytes > o.imageBytes) throw new Error('--data cannot exceed --image')
  const t0 = performance.now()
  const r = simulate(o)
  const single = simulate({ ...o, hosts: 2, churn: 0 })
  const seconds = (performance.now() - t0) / 1000
  const out = { ...r, single: single.max, ratio: r.p99 / single.max, cpuSeconds: Number(seconds.toFixed(1)) }
  if (values.json) { console.log(JSON.stringify(out)); return }
  const f = (x: number) => x.toFixed(2)
  console.log(`sim:fleet: ${o.hosts} hosts (1 source), ${(o.rate * 8 / 1e6).toFixed(0)} Mbit each way, latency ${o.latencyMs} ms, churn ${(o.churn * 100).toFixed(0)}%, mesh ${o.mesh} (max ${o.maxPeers} peers), adverts ${o.relayAdverts ? 'relayed' : 'from holders only'}; image ${(o.imageBytes / 2 ** 30).toFixed(2)} GiB with ${(o.dataBytes / 1e6).toFixed(0)} MB of data, wire ratio ${o.wireRatio}`)
  console.log(`completion (s): p50 ${f(r.p50)}  p99 ${f(r.p99)}  max ${f(r.max)}  (${r.finished} of ${r.receivers} receivers; ${r.left} left)${r.timedOut ? '  TIMED OUT' : ''}`)
  console.log(`one receiver alone: ${f(single.max)} s; p99 / alone ${f(out.ratio)}`)
  console.log(`source uploaded ${f(r.sourceCopies)} copies, its last at ${f(r.sourceBusy)} s; duplicates ${(r.duplicateShare * 100).toFixed(1)}% of the data delivered`)
  console.log(`connections per host at most ${r.maxConnections}; messages sent per host: max ${r.maxMessages}, mean ${r.meanMessages.toFixed(0)}`)
  console.log(`(${r.events} events; ${seconds.toFixed(1)} s of CPU on one core)`)
}

try {
  main()
} catch (err) {
  console.error(`sim:fleet: ${(err as Error).message}`)
  process.exitCode = 2
}
