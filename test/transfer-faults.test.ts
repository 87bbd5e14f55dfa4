import t from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { makeImagePair, pollJob, sha256, startFleet, startTestnet, tempDir, waitPeers } from '../testing/fleet.js'
import { startDaemon } from '../testing/daemon.js'

const BAD_PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), '../testing/bad-peer.js')

async function images (dir: string) {
  // A larger image fetched whole: long enough to interrupt.
  return makeImagePair(dir, 16384, 20, 7)
}

t.test('a peer sending bad blocks is caught and dropped; the fetch completes from the good one', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [any, any]
  const dir = await tempDir('osfarm-bad-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await images(dir)
  await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  const bad = spawn(process.execPath, [BAD_PEER], {
    env: { ...process.env, BAD_PEER: JSON.stringify({ image: pair.derived, name: 'derived', secret: fleet.secret, bootstrap: fleet.bootstrap.split(','), allow: fleet.keys }) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(() => { bad.kill('SIGKILL') })
  const badKey: string = await new Promise((resolve, reject) => {
    bad.stdout!.once('data', d => resolve(JSON.parse(String(d)).key))
    bad.once('exit', code => reject(new Error(`bad peer exited ${code}`)))
  })
  await b.ctlJson('fleet', 'allow', badKey)
  await a.ctlJson('fleet', 'allow', badKey)
  await waitPeers(b, 2)
  const r = await b.ctlJson('fetch', 'derived')
  t.ok(r.stats.badBlocks >= 1, `bad blocks caught (${r.stats.badBlocks})`)
  t.ok(r.stats.droppedPeers.includes(badKey), 'the bad peer was dropped')
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical all the same')
})

t.test('a peer killed mid-transfer: the fetch completes from the other', async t => {
  const fleet = await startFleet(3, t.teardown)
  const [a1, a2, b] = fleet.daemons as [any, any, any]
  const dir = await tempDir('osfarm-kill-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await images(dir)
  for (const a of [a1, a2]) {
    await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
    await a.ctlJson('fleet', 'init', '--upload-limit', String(2_000_000))
  }
  for (const a of [a1, a2]) await waitPeers(a, 2)
  await waitPeers(b, 2)
  const job = await b.ctlJson('fetch', 'derived', '--no-wait')
  await pollJob(b, job.id, j => j.progress.phase.startsWith('fetch') && j.progress.done > j.progress.total * 0.2)
  await a1.stop('SIGKILL')
  const end = await pollJob(b, job.id, j => j.state !== 'running')
  t.equal(end.state, 'done', end.error?.message ?? 'fetch done')
  t.ok(Object.keys(end.result.stats.peers).length === 2, 'both peers had sent blocks')
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})

t.test('osfarmd killed with -9 mid-fetch resumes without refetching verified blocks', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a] = fleet.daemons as [any]
  let b = fleet.daemons[1]! as any
  const dir = await tempDir('osfarm-resume-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await images(dir)
  await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await a.ctlJson('fleet', 'init', '--upload-limit', String(3_000_000))
  await waitPeers(b, 1)
  const job = await b.ctlJson('fetch', 'derived', '--no-wait')
  const mid = await pollJob(b, job.id, j => j.progress.phase.startsWith('fetch') && j.progress.done > j.progress.total * 0.4)
  await new Promise(resolve => setTimeout(resolve, 1200)) // past a progress flush
  await b.stop('SIGKILL')
  b = await b.restart()
  t.teardown(() => b.stop('SIGKILL'))
  const end = Date.now() + 120_000
  let resumed: any
  while (!resumed && Date.now() < end) {
    const jobs = await b.ctlJson('job', 'ls')
    resumed = jobs.find((j: any) => j.kind === 'fetch' && j.state === 'done')
    if (!resumed) await new Promise(resolve => setTimeout(resolve, 200))
  }
  t.ok(resumed, 'the fetch resumed by itself and finished')
  const s = resumed.result.stats
  const needed = s.blocks - s.zeroBlocks
  t.ok(s.resumed >= mid.progress.done * 0.5, `resumed ${s.resumed} blocks (${mid.progress.done} were done when killed)`)
  t.ok(s.received <= needed - s.resumed + s.blocks * 0.01, `received ${s.received}: not refetched (needed ${needed}, resumed ${s.resumed})`)
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})

t.test('a host off the allow-list is refused and learns no image names', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [any, any]
  const dir = await tempDir('osfarm-deny-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 256)
  await a.ctlJson('image', 'import', pair.derived, '--name', 'secret-image')
  await waitPeers(a, 1)
  // The intruder has the secret and allows everyone itself; the fleet does not list it.
  const c = await startDaemon()
  t.teardown(async () => { await c.stop('SIGKILL'); await fs.rm(c.dir, { recursive: true, force: true }) })
  await c.ctlJson('fleet', 'init', '--secret', fleet.secret, '--bootstrap', fleet.bootstrap, '--dht-host', '127.0.0.1')
  for (const k of fleet.keys) await c.ctlJson('fleet', 'allow', k)
  // The refusal itself is the event waited for: a member logs the intruder's key as refused.
  const intruder = (await c.ctlJson('fleet', 'show')).publicKey as string
  await eventually('the fleet refuses the intruder', () => [a, b].some(d => d.output().split('\n').some((l: string) => l.includes('peer refused') && l.includes(intruder))), { timeoutMs: 60_000 })
  t.same(await c.ctlJson('peer', 'ls'), [], 'the intruder has no peers')
  const r = await c.ctl('fetch', 'secret-image', '--peer-timeout', '3')
  t.not(r.exitCode, 0)
  t.match(r.stderr, /IMAGE_NOT_FOUND/, 'and cannot resolve the name')
  const root = (await a.ctlJson('image', 'show', 'secret-image')).root
  const r2 = await c.ctl('fetch', root, '--peer-timeout', '3')
  t.not(r2.exitCode, 0, 'nor fetch it by root')
  t.equal((await a.ctlJson('peer', 'ls')).length, 1, 'the fleet still sees only itself')
  t.equal((await b.ctlJson('peer', 'ls')).length, 1)
})

void startTestnet
