// npm run bench:build — the image builder against the mirror this host's apt uses:
//   mmdebstrap minbase alone; osfarm's cold build of the same spec (target: ≤ mmdebstrap + 3 s);
//   the same request again (target: ≤ 50 ms); +openssh-server with the base cached vs. cold;
//   one layer snapshot of a 2 GiB and a 16 GiB volume (target: the same, well under 1 s); and
//   the share of blocks two independent builds of one spec have in common.
// Usage: node dist/scripts/bench/build.js [--json] [--keep]

import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Builder } from '../../daemon/build/builder.js'
import { parseSpec } from '../../daemon/build/spec.js'
import { pickMirror, readHostSources } from '../../daemon/build/host-mirror.js'
import { bootstrap } from '../../daemon/build/tools/mmdebstrap.js'
import { makeFs } from '../../daemon/build/tools/mke2fs.js'
import { BUILD_EPOCH } from '../../daemon/build/plan.js'
import { createFileStore } from '../../daemon/store/file/file-store.js'
import { BlockHasher } from '../../daemon/blocks/block-hasher.js'
import { HASH_BYTES } from '../../daemon/blocks/hash.js'
import type { Manifest } from '../../daemon/blocks/manifest.js'
import type { LayerStore } from '../../daemon/store/layer-store.js'

const json = process.argv.includes('--json')
const keep = process.argv.includes('--keep')
const REPEATS = 20

const minbase = parseSpec(JSON.stringify({ name: 'bench-minbase', release: 'bookworm', variant: 'minbase', size: '2G' }), 'json')
const ssh = parseSpec(JSON.stringify({ name: 'bench-ssh', release: 'bookworm', variant: 'minbase', size: '2G', packages: ['openssh-server'] }), 'json')

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-bench-build-'))
const results: Record<string, number | string> = {}
const say = (line: string) => { if (!json) console.log(line) }
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`

async function timed<T> (fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now()
  const r = await fn()
  return [r, performance.now() - t0]
}

async function store (name: string): Promise<{ store: LayerStore, builder: Builder }> {
  const s = await createFileStore({ dir: path.join(dir, name, 'store') })
  return { store: s, builder: new Builder({ store: s, workDir: path.join(dir, name, 'work') }) }
}

try {
  const mirror = pickMirror(await readHostSources(), 'bookworm')
  if (!mirror) throw new Error('this host\'s apt has no source for bookworm')
  say(`osfarm bench:build — ${os.availableParallelism()} CPUs, load ${os.loadavg().map(l => l.toFixed(1)).join(' ')}, mirror from the host's apt sources`)

  // 1. mmdebstrap alone, the same way the debian flavour calls it.
  const tree = path.join(dir, 'mmdebstrap', 'root')
  await fs.mkdir(tree, { recursive: true })
  const [, mmMs] = await timed(() => bootstrap('mmdebstrap', { release: 'bookworm', dir: tree, mirror, variant: 'minbase', arch: 'amd64', components: ['main'], epoch: BUILD_EPOCH, onLine: () => {} }))
  results.mmdebstrapSeconds = mmMs / 1000
  say(`mmdebstrap minbase alone                 ${seconds(mmMs)}`)

  // 2. osfarm cold, 3. the same request again.
  const a = await store('a')
  const [coldBase, coldMs] = await timed(() => a.builder.build(minbase))
  results.coldSeconds = coldMs / 1000
  say(`osfarm cold build, same spec             ${seconds(coldMs)}  (mmdebstrap + ${seconds(coldMs - mmMs)}; target ≤ + 3 s)`)
  const repeats: number[] = []
  for (let i = 0; i < REPEATS; i++) repeats.push((await timed(() => a.builder.build(minbase)))[1])
  repeats.sort((x, y) => x - y)
  results.repeatMedianMs = repeats[REPEATS >> 1]!
  results.repeatMaxMs = repeats.at(-1)!
  say(`repeated request (median of ${REPEATS})        ${repeats[REPEATS >> 1]!.toFixed(1)} ms (max ${repeats.at(-1)!.toFixed(1)} ms; target ≤ 50 ms)`)

  // 4. +openssh-server with the base cached, and cold in a second, empty store.
  const [sshCached, sshCachedMs] = await timed(() => a.builder.build(ssh))
  results.sshBaseCachedSeconds = sshCachedMs / 1000
  say(`+openssh-server, base cached             ${seconds(sshCachedMs)}  (layers: ${sshCached.layers.map(l => `${l.step}${l.cached ? ' cached' : ` ${l.seconds.toFixed(1)} s`}`).join(', ')})`)
  const b = await store('b')
  const [sshCold, sshColdMs] = await timed(() => b.builder.build(ssh))
  results.sshColdSeconds = sshColdMs / 1000
  say(`+openssh-server, cold                    ${seconds(sshColdMs)}  (layers: ${sshCold.layers.map(l => `${l.step} ${l.seconds.toFixed(1)} s`).join(', ')})`)

  // Two independent builds of one spec (stores a and b, each from the mirror).
  const hasher = new BlockHasher()
  try {
    for (const [label, key] of [['minbase (base layer)', coldBase.key], ['minbase+openssh-server', sshCold.key]] as const) {
      const m1 = await hasher.indexFile((await a.store.stat(key))!.path)
      const m2 = await hasher.indexFile((await b.store.stat(key))!.path)
      const s = share(m1, m2)
      results[`share ${label}`] = `${s.sameOffset}/${s.nonZero}`
      say(`independent builds, ${label.padEnd(22)} ${pct(s.sameOffset, s.nonZero)} of ${s.nonZero} non-zero 4 KiB blocks identical at the same offset, ${pct(s.anyOffset, s.nonZero)} present anywhere${s.identical ? ' (byte-identical images)' : ''}`)
    }
  } finally {
    await hasher.close()
  }

  // 5. One layer snapshot: the same tree on a 2 GiB and a 16 GiB volume.
  const c = await createFileStore({ dir: path.join(dir, 'c') })
  for (const [label, size] of [['2 GiB', 2 ** 31], ['16 GiB', 2 ** 34]] as const) {
    const key = `bench-${size}`
    const vol = await c.prepare(key, { size })
    await makeFs(vol.path, { from: tree, uuid: '6d1f2a3b-0000-4000-8000-000000000001', hashSeed: '6d1f2a3b-0000-4000-8000-000000000002', time: BUILD_EPOCH, confDir: path.join(dir, 'c-conf') })
    await c.commit(key)
    const times: number[] = []
    for (let i = 0; i < 3; i++) {
      const [, ms] = await timed(() => c.prepare(`${key}-child`, { parent: key }))
      times.push(ms)
      await c.remove(`${key}-child`)
    }
    times.sort((x, y) => x - y)
    results[`snapshot ${label} ms`] = times[1]!
    say(`layer snapshot, ${label.padEnd(6)} volume (file store)  ${times[1]!.toFixed(0)} ms (median of 3; ${c.backend} backend: ${await reflinkNote(dir)})`)
  }
} finally {
  if (json) console.log(JSON.stringify(results, null, 2))
  if (keep) console.error(`kept ${dir}`)
  else await fs.rm(dir, { recursive: true, force: true })
}

function share (m1: Manifest, m2: Manifest): { nonZero: number, sameOffset: number, anyOffset: number, identical: boolean } {
  const other = new Set<string>()
  for (let i = 0; i < m2.hashes.length; i += HASH_BYTES) {
    const h = m2.hashes.subarray(i, i + HASH_BYTES)
    if (!h.every(x => x === 0)) other.add(h.toString('hex'))
  }
  let nonZero = 0
  let sameOffset = 0
  let anyOffset = 0
  for (let i = 0; i < m1.hashes.length; i += HASH_BYTES) {
    const h = m1.hashes.subarray(i, i + HASH_BYTES)
    if (h.every(x => x === 0)) continue
    nonZero++
    if (h.equals(m2.hashes.subarray(i, i + HASH_BYTES))) sameOffset++
    if (other.has(h.toString('hex'))) anyOffset++
  }
  return { nonZero, sameOffset, anyOffset, identical: m1.root.equals(m2.root) }
}

function pct (n: number, d: number): string {
  return `${((n / Math.max(1, d)) * 100).toFixed(2)}%`
}

async function reflinkNote (at: string): Promise<string> {
  const st = await fs.statfs(at)
  // btrfs 0x9123683e, xfs 0x58465342: reflink clones; others: a sparse copy of the allocated data.
  return st.type === 0x9123683e || st.type === 0x58465342 ? 'reflink clone' : 'sparse copy (no reflink here)'
}
