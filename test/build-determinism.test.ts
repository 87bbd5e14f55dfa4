// One spec with a base, packages, a file and a script, built at the same time by three real
// daemons (separate data dirs and apt caches, the mirror this host's apt uses): one content
// root, every layer byte-identical. Prints, per layer, the blocks that differ between the
// daemons and the parent's blocks a layer keeps in place (what a host holding the parent
// does not fetch again).

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import type { BuildResultInfo } from '../protocol/rpc.js'

const DAEMONS = 3
const dir = await tempDir('osfarm-determinism-')
const daemons: TestDaemon[] = []
for (let i = 0; i < DAEMONS; i++) daemons.push(await startDaemon({ dir: path.join(dir, `d${i}`) }))
const hasher = new BlockHasher(2)
t.teardown(async () => {
  await hasher.close()
  for (const d of daemons) await d.stop('SIGKILL')
  await fs.rm(dir, { recursive: true, force: true })
})

const specFile = path.join(dir, 'spec.json')
await fs.writeFile(specFile, JSON.stringify({
  name: 'same-everywhere',
  release: 'trixie',
  variant: 'minbase',
  size: '2G',
  packages: ['openssh-server'],
  files: [{ path: '/etc/osfarm-note', content: 'built three times\n' }],
  // useradd replaces /etc/passwd, group, shadow and gshadow by rename, as adduser does.
  scripts: [{ name: 'accounts', content: 'useradd -m -s /bin/sh builder\necho "$(wc -l < /etc/passwd) accounts" > /etc/osfarm-accounts\n' }]
}))

async function layerFile (d: TestDaemon, key: string): Promise<string> {
  const found = String((await execa('find', [d.dataDir, '-name', `${key}.img`])).stdout).split('\n').filter(Boolean)
  if (found.length !== 1) throw new Error(`layer ${key} not found once in ${d.dataDir}`)
  return found[0]!
}

interface Counts { nonZero: number, same: number }

// Non-zero blocks of a, and how many of them b holds at the same offset.
function compare (a: Buffer, b: Buffer): Counts {
  let nonZero = 0
  let same = 0
  for (let i = 0; i < a.length; i += 32) {
    const h = a.subarray(i, i + 32)
    if (h.every(x => x === 0)) continue
    nonZero++
    if (h.equals(b.subarray(i, i + 32))) same++
  }
  return { nonZero, same }
}

t.test('three daemons build one spec at once: one content root', async t => {
  const results = await Promise.all(daemons.map(async d => {
    const out = await d.ctl('build', specFile, '--wait', '--json')
    if (out.exitCode !== 0) throw new Error(`build failed (${out.exitCode}): ${out.stderr}\n${d.output().slice(-4000)}`)
    return JSON.parse(out.stdout) as BuildResultInfo
  }))
  t.same(results[0]!.layers.map(l => l.step), ['base', 'packages', 'files', 'scripts'], 'four layers')
  for (const r of results) t.notOk(r.cached, 'built, not answered from a cache')

  const layers = await Promise.all(results.map((r, i) => Promise.all(r.layers.map(async l => (await hasher.indexFile(await layerFile(daemons[i]!, l.key))).hashes))))
  for (const [n, l] of results[0]!.layers.entries()) {
    const diffs = layers.slice(1).map(other => { const c = compare(layers[0]![n]!, other[n]!); return c.nonZero - c.same })
    const kept = n > 0 ? compare(layers[0]![n - 1]!, layers[0]![n]!) : undefined
    t.comment(`${l.step}: ${compare(layers[0]![n]!, layers[0]![n]!).nonZero} non-zero blocks; differing from daemon 0: ${diffs.join(', ')}` +
      (kept ? `; the parent's ${kept.nonZero} non-zero blocks kept in place: ${kept.same} (${(kept.same / kept.nonZero * 100).toFixed(2)}%)` : ''))
    for (const [i, d] of diffs.entries()) t.equal(d, 0, `${l.step} layer: daemon ${i + 1} wrote the same blocks as daemon 0`)
    // A layer is written into its parent's snapshot: what the step left alone stays in place
    // (a layout made afresh moves nearly everything after the first new file).
    if (kept) t.ok(kept.same / kept.nonZero > 0.9, `${l.step} layer keeps over 90% of its parent's blocks in place`)
  }
  const roots = results.map(r => r.image.root)
  t.comment(`content roots: ${roots.join(' ')}`)
  t.equal(new Set(roots).size, 1, 'one content root')
  t.equal(new Set(results.map(r => r.key)).size, 1, 'one image key')

  const passwd = await execa('debugfs', ['-R', 'cat /etc/osfarm-accounts', await layerFile(daemons[0]!, results[0]!.key)])
  t.match(String(passwd.stdout), /^\d+ accounts$/m, 'the script ran in the image')
})
