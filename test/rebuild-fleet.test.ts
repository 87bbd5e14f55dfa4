// The story end to end: a rebuild policy on host A, a seed policy on host B, a signed apt
// repository on 127.0.0.1 that publishes version 2 of a package; with no user action, A builds
// version 2 of the image and B ends up holding it (version 1 released by --keep 1). Prints the
// bytes B received next to the blocks that differ between the versions. Fleet on a HyperDHT
// testnet on 127.0.0.1.

import t from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { joinFleet, startTestnet } from '../testing/fleet.js'
import { createAptRepo } from '../testing/apt-repo.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import type { FetchResult, ImageInfo, JobInfo, RebuildPolicy } from '../protocol/rpc.js'

const WAIT_MS = 300_000
const dir = await tempDir('osfarm-rebuild-fleet-')
const repo = await createAptRepo(path.join(dir, 'apt'))
await repo.publish({ 'osfarm-hello': '1' })
await fs.writeFile(path.join(dir, 'a.json'), JSON.stringify({ mirrorCheckSeconds: 2 }))
const { bootstrap } = await startTestnet(t.teardown)
const a: TestDaemon = await startDaemon({ dir: path.join(dir, 'a'), args: ['--config', path.join(dir, 'a.json')] })
const b: TestDaemon = await startDaemon({ dir: path.join(dir, 'b') })
t.teardown(async () => {
  await a.stop('SIGKILL')
  await b.stop('SIGKILL')
  await repo.stop().catch(() => {})
  await fs.rm(dir, { recursive: true, force: true })
})

const until = <T> (what: string, fn: () => Promise<T | undefined>, ms = WAIT_MS): Promise<T> => eventually(what, fn, { timeoutMs: ms, intervalMs: 500 })

t.test('a rebuild policy on A, a seed policy on B: B ends up with version 2', async t => {
  await joinFleet([a, b], bootstrap, { connected: true })

  const spec = path.join(dir, 'fresh.json')
  await fs.writeFile(spec, JSON.stringify({
    name: 'fresh', release: 'bookworm', size: '2G',
    repositories: [{ uri: repo.uri, suites: [repo.suite], key: repo.key }],
    packages: ['osfarm-hello']
  }))
  await b.ctlJson('seed', 'add', 'fresh', '--keep', '1')
  const policy = await a.ctlJson<RebuildPolicy>('rebuild', 'add', spec, '--on-change')
  t.equal(policy.rights, 'admin', 'made by root over the admin socket: it may name a loopback repository')

  const v1 = await until('A builds version 1', async () => (await a.ctlJson<ImageInfo[]>('image', 'ls')).find(i => i.name === 'fresh' && i.version === 1))
  await until('B seeds version 1', async () => (await b.ctlJson<ImageInfo[]>('image', 'ls')).find(i => i.root === v1.root))

  await repo.publish({ 'osfarm-hello': '2' })
  const v2 = await until('A rebuilds version 2 on its own', async () => (await a.ctlJson<ImageInfo[]>('image', 'ls')).find(i => i.name === 'fresh' && i.version === 2))
  const onB = await until('B holds version 2', async () => (await b.ctlJson<ImageInfo[]>('image', 'ls')).find(i => i.root === v2.root))
  t.equal(onB.name, 'fresh')
  t.equal(onB.version, 2, 'B registered it as version 2 (from the signed advert)')
  await until('B released version 1 (keep 1)', async () => (await b.ctlJson<ImageInfo[]>('image', 'ls')).some(i => i.root === v1.root) ? undefined : true)
  const rebuilds = await a.ctlJson<RebuildPolicy[]>('rebuild', 'ls')
  t.match(rebuilds[0]!.lastResult, /built version 2/)

  const jobs = await b.ctlJson<JobInfo[]>('job', 'ls')
  const fetch = jobs.filter(j => j.kind === 'fetch' && j.state === 'done').map(j => j.result as FetchResult).find(r => r.image?.root === v2.root)!
  const hasher = new BlockHasher(2)
  t.teardown(() => hasher.close())
  const file = async (image: ImageInfo) => String((await execa('find', [a.dataDir, '-name', `${image.volume}.img`])).stdout).split('\n')[0]!
  const m1 = await hasher.indexFile(await file(v1))
  const m2 = await hasher.indexFile(await file(v2))
  let differ = 0
  for (let i = 0; i < m2.hashes.length; i += 32) if (!m1.hashes.subarray(i, i + 32).equals(m2.hashes.subarray(i, i + 32))) differ++
  t.comment(`v1 → v2: ${differ} blocks differ (${(differ * 4096 / 1e6).toFixed(2)} MB); B received ${fetch.stats?.received} blocks, ${((fetch.stats?.wireBytes ?? 0) / 1e6).toFixed(2)} MB on the wire (+ manifest ${((fetch.stats?.manifestBytes ?? 0) / 1e6).toFixed(2)} MB), reused in place ${fetch.stats?.inPlace}, copied locally ${fetch.stats?.copiedLocal}`)
  t.ok((fetch.stats?.received ?? Infinity) <= differ, 'B received at most the blocks that differ')
})
