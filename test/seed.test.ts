import t from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import path from 'node:path'
import { addToFleet, makeImagePair, sha256, startFleet, startTestnet, tempDir, waitPeers } from '../testing/fleet.js'
import { startDaemon, type TestDaemon } from '../testing/daemon.js'
import { OsfarmClient } from '../client/client.js'

const WAIT_MS = 120_000

const until = <T> (what: string, fn: () => Promise<T | undefined | false>, ms = WAIT_MS): Promise<T> => eventually(what, fn, { timeoutMs: ms, intervalMs: 250 })

const holds = (d: TestDaemon, root: string) => until(`an image ${root.slice(0, 12)}`, async () => {
  const list = await d.ctlJson('image', 'ls')
  return list.find((i: any) => i.root === root)
})

const lacks = (d: TestDaemon, root: string) => until(`no image ${root.slice(0, 12)}`, async () => {
  const list = await d.ctlJson('image', 'ls')
  return !list.some((i: any) => i.root === root)
})

t.test('a fleet-wide policy seeds every host with no user action; a late host catches up; new versions replace old; removing the policy releases', async t => {
  const fleet = await startFleet(3, t.teardown)
  const [a, b, c] = fleet.daemons as [TestDaemon, TestDaemon, TestDaemon]
  const dir = await tempDir('osfarm-seed-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const v1 = await makeImagePair(dir, 4096, 20, 11)
  const v2dir = path.join(dir, 'v2')
  await fs.mkdir(v2dir)
  const v2 = await makeImagePair(v2dir, 4096, 30, 12)
  const other = path.join(dir, 'other')
  await fs.mkdir(other)
  const unrelated = await makeImagePair(other, 512, 20, 13)

  const img1 = await a.ctlJson('image', 'import', v1.derived, '--name', 'app-1', '--label', 'role=web')
  await a.ctlJson('image', 'import', unrelated.base, '--name', 'tools')
  for (const d of [a, b, c]) await waitPeers(d, 2)

  // One policy on A, published fleet-wide: B and C fetch app-1 on their own.
  const t0 = Date.now()
  const policy = await a.ctlJson('seed', 'add', 'app-*', '--label', 'role=w*', '--keep', '1', '--fleet')
  t.equal(policy.scope, 'fleet')
  for (const d of [b, c]) {
    const got = await holds(d, img1.root)
    t.equal(got.origin, 'fetch', 'fetched by seeding')
    t.same(got.labels, ['role=web'], 'the builder\'s labels travel with the advert')
  }
  t.comment(`roll-out to 2 hosts in ${Date.now() - t0} ms`)
  for (const d of [b, c]) {
    const policies = await d.ctlJson('seed', 'ls')
    t.same(policies.map((p: any) => p.id), [policy.id], 'the fleet default reached the host')
    t.notOk((await d.ctlJson('image', 'ls')).some((i: any) => i.name === 'tools'), 'an image no policy wants is not fetched')
  }
  const out = path.join(dir, 'out-c.img')
  await c.ctlJson('image', 'export', img1.root.slice(0, 16), '-o', out)
  t.equal(await sha256(out), await sha256(v1.derived), 'the seeded copy is byte-identical')
  const jobs = await b.ctlJson('job', 'ls')
  const seedJob = jobs.find((j: any) => j.kind === 'fetch')
  t.equal(seedJob.priority, 'background', 'seed fetches run as background jobs')

  // Status on A: who holds it, and the roll-out.
  const st = await until('roll-out complete in status', async () => {
    const s = await a.ctlJson('seed', 'status')
    const i = s.images.find((x: any) => x.root === img1.root)
    return i && i.fleet.complete === 3 ? s : undefined
  })
  const entry = st.images.find((x: any) => x.root === img1.root)
  t.equal(entry.local, 'held')
  t.equal(entry.holders.length, 2, 'both other hosts hold it')
  t.ok(entry.holders.every((h: any) => h.complete))
  t.equal(entry.fleet.hosts, 3)

  // D joins late: it hears the fleet's defaults and the adverts, and catches up.
  const d = await startDaemon()
  t.teardown(async () => { await d.stop('SIGKILL'); await fs.rm(d.dir, { recursive: true, force: true }) })
  await addToFleet(d, fleet, [a, b, c])
  await holds(d, img1.root)
  t.same((await d.ctlJson('seed', 'ls')).map((p: any) => p.id), [policy.id], 'the late host applies the fleet policy')
  t.pass('the late host caught up')
  // What D's seed fetch took from the others went out under their policy for that image.
  const uploaded = await Promise.all([a, b, c].map(async x => (await x.ctlJson('seed', 'ls'))[0].uploaded as number))
  t.ok(uploaded.reduce((s, n) => s + n, 0) > 0, `served under the policy: ${uploaded.join(', ')} bytes`)

  // A newer version: every host fetches it and, keeping 1, releases the old one.
  const img2 = await a.ctlJson('image', 'import', v2.derived, '--name', 'app-2', '--label', 'role=web')
  for (const x of [b, c, d]) {
    await holds(x, img2.root)
    await lacks(x, img1.root)
  }
  t.ok((await a.ctlJson('image', 'ls')).some((i: any) => i.root === img1.root), 'the builder keeps its own old version (seeding never releases a user\'s image)')
  t.pass('new version everywhere, old one released')

  // Removing the policy (on any host: it is the fleet's) releases what it brought.
  await c.ctlJson('seed', 'rm', policy.id)
  for (const x of [b, c, d]) await lacks(x, img2.root)
  t.equal((await a.ctlJson('seed', 'ls')).length, 0, 'the removal reached the author too')
  t.ok((await a.ctlJson('image', 'ls')).some((i: any) => i.root === img2.root), 'the builder keeps its image')
})

t.test('a host policy: newest N, max size, and a user\'s job goes first', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [TestDaemon, TestDaemon]
  const dir = await tempDir('osfarm-seed2-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const small = await makeImagePair(dir, 1024, 20, 21)
  const big = path.join(dir, 'big')
  await fs.mkdir(big)
  const large = await makeImagePair(big, 8192, 20, 22)
  const s1 = await a.ctlJson('image', 'import', small.base, '--name', 'db-1')
  const s2 = await a.ctlJson('image', 'import', small.derived, '--name', 'db-2')
  const l3 = await a.ctlJson('image', 'import', large.derived, '--name', 'db-3')
  await waitPeers(b, 1)
  const p = await b.ctlJson('seed', 'add', 'db-*', '--keep', '2', '--max-size', '8M')
  t.equal(p.scope, 'host')
  await holds(b, s2.root)
  await holds(b, s1.root)
  t.notOk((await b.ctlJson('image', 'ls')).some((i: any) => i.root === l3.root), 'over --max-size: not held')
  t.same(await a.ctlJson('seed', 'ls'), [], 'a host policy stays on its host')

  // A user's fetch starts while a seed fetch could: the seed one waits until it ends.
  await b.ctlJson('seed', 'rm', p.id)
  await lacks(b, s1.root)
  await lacks(b, s2.root)
  const job = await b.ctlJson('fetch', 'db-3', '--no-wait')
  await b.ctlJson('seed', 'add', 'db-*', '--keep', '2')
  const user = await until('the user fetch', async () => { const j = await b.ctlJson('job', 'show', job.id); return j.state === 'done' ? j : undefined })
  await holds(b, s2.root)
  const seeds = (await b.ctlJson('job', 'ls')).filter((j: any) => j.priority === 'background' && j.createdAt > user.createdAt)
  t.ok(seeds.length > 0, 'seeding ran after the policy came back')
  for (const j of seeds) t.ok(j.state !== 'done' || j.createdAt >= user.finishedAt, `seed job ${j.id} (${j.state}) did not run alongside the user's fetch`)
  const st = await b.ctlJson('seed', 'status')
  t.same(st.images.filter((i: any) => i.local === 'held').map((i: any) => i.name).sort(), ['db-2', 'db-3'], 'the two newest are held (db-3 the user fetched)')
})

t.test('relabelling: the builder changes an image\'s labels; holders, late hosts and seed policies follow', async t => {
  const fleet = await startFleet(3, t.teardown)
  const [a, b, c] = fleet.daemons as [TestDaemon, TestDaemon, TestDaemon]
  const dir = await tempDir('osfarm-relabel-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 1024, 20, 31)
  const img = await a.ctlJson('image', 'import', pair.derived, '--name', 'svc-1', '--label', 'role=db', '--label', 'team=x')
  for (const d of [a, b, c]) await waitPeers(d, 2)
  const labelsOn = async (d: TestDaemon) => (await d.ctlJson('image', 'show', 'svc-1')).labels ?? []
  const labelled = (d: TestDaemon, want: string[]) => until(`labels ${want.join(',')}`, async () => {
    const got = await labelsOn(d)
    return got.length === want.length && want.every(l => got.includes(l))
  })

  // B holds a copy (a user's fetch); C seeds what is labelled role=web: nothing yet.
  const fetched = await b.ctlJson('fetch', 'svc-1')
  t.same(fetched.image.labels, ['role=db', 'team=x'])
  await c.ctlJson('seed', 'add', 'svc-*', '--label', 'role=web')
  const refused = await b.ctl('image', 'label', 'svc-1', 'role=web')
  t.equal(refused.exitCode, 77, 'a host that did not build the image cannot relabel it')
  t.match(refused.stderr, /only that host can change its labels/)
  t.same(await labelsOn(b), ['role=db', 'team=x'], 'and its copy keeps its labels')
  const bad = await a.ctl('image', 'label', 'svc-1', 'no label')
  t.equal(bad.exitCode, 64, 'a malformed label is refused')
  t.same(await labelsOn(a), ['role=db', 'team=x'], 'and changes nothing')

  // The builder relabels: B's copy follows, and C's policy now wants the image.
  const r1 = await a.ctlJson('image', 'label', 'svc-1', 'role=web', '--rm', 'team')
  t.same(r1.labels, ['role=web'])
  await labelled(b, ['role=web'])
  const seeded = await holds(c, img.root)
  t.same(seeded.labels, ['role=web'], 'seeded with the new labels')
  t.pass('the holder relabelled its copy; the policy fetched the image')

  // Back to role=db: C releases it (no policy wants it), B keeps its own fetch, relabelled.
  await a.ctlJson('image', 'label', 'svc-1', 'role=db')
  await lacks(c, img.root)
  await labelled(b, ['role=db'])
  t.pass('released where no policy wants it any more')

  // Relabellings at once (one connection, no CLI start-up between them): the builder signs
  // them one after the other, and B ends as A does.
  const client = await OsfarmClient.connect(a.socket)
  await Promise.all([1, 2, 3, 4].map(n => client.call('image.label', { id: 'svc-1', set: [`tier=${n}`] })))
  client.close()
  const tiers = await labelsOn(a)
  t.equal(tiers.length, 2, `one tier label wins on the builder: ${tiers.join(',')}`)
  await labelled(b, tiers)
  t.pass('the holder agrees with the builder')

  // A fetch that began before a relabelling registers the labels as they are when it ends.
  const slow = await c.ctlJson('fetch', 'svc-1', '--limit', '200k', '--no-wait')
  await until('the slow fetch under way', async () => { const j = await c.ctlJson('job', 'show', slow.id); return j.state === 'running' && j.progress?.unit !== 'steps' })
  await a.ctlJson('image', 'label', 'svc-1', 'tier=5')
  const fetched2 = await until('the slow fetch', async () => { const j = await c.ctlJson('job', 'show', slow.id); return j.state !== 'running' && j.state !== 'queued' ? j : undefined })
  t.equal(fetched2.state, 'done')
  t.same((await labelsOn(c)).sort(), ['role=db', 'tier=5'], 'registered with the labels given during the fetch')
  const final = await labelsOn(a)

  // The builder goes; a host that joins now hears the image only from B, with its newest labels.
  await a.stop('SIGKILL')
  const d = await startDaemon()
  t.teardown(async () => { await d.stop('SIGKILL'); await fs.rm(d.dir, { recursive: true, force: true }) })
  await addToFleet(d, fleet, [b, c])
  await d.ctlJson('seed', 'add', 'svc-*', '--label', 'role=db')
  const late = await holds(d, img.root)
  t.same(late.labels.sort(), [...final].sort(), 'passed on by the holder with the builder\'s newest labels (team=x gone)')
})

t.test('a host not connected to the source hears of an image through a peer (offers) and fetches it through that peer', async t => {
  const { bootstrap } = await startTestnet(t.teardown)
  const hosts: TestDaemon[] = []
  for (let i = 0; i < 3; i++) {
    const d = await startDaemon({})
    t.teardown(async () => { await d.stop('SIGKILL'); await fs.rm(d.dir, { recursive: true, force: true }) })
    hosts.push(d)
  }
  const [a, b, c] = hosts as [TestDaemon, TestDaemon, TestDaemon]
  const first = await a.ctlJson('fleet', 'init', '--bootstrap', bootstrap, '--dht-host', '127.0.0.1')
  const keys = [first.publicKey as string]
  for (const d of [b, c]) keys.push((await d.ctlJson('fleet', 'init', '--secret', first.secret, '--bootstrap', bootstrap, '--dht-host', '127.0.0.1')).publicKey)
  const [ka, kb, kc] = keys as [string, string, string]
  // A line: A and C each allow only B, so they never connect to each other.
  await a.ctlJson('fleet', 'allow', kb)
  await b.ctlJson('fleet', 'allow', ka)
  await b.ctlJson('fleet', 'allow', kc)
  await c.ctlJson('fleet', 'allow', kb)
  await waitPeers(b, 2)
  const dir = await tempDir('osfarm-offers-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 4096, 20, 21)
  for (const d of [b, c]) await d.ctlJson('seed', 'add', 'far-*')
  const img = await a.ctlJson('image', 'import', pair.derived, '--name', 'far-1')
  const got = await holds(c, img.root)
  t.equal(got.origin, 'fetch', 'C fetched the image it heard of only through B')
  t.same((await c.ctlJson('peer', 'ls')).map((p: any) => p.key), [kb], 'C was never connected to A')
  const done = (await c.ctlJson('job', 'ls')).find((j: any) => j.kind === 'fetch' && j.state === 'done')
  const job = await c.ctlJson('job', 'show', done.id)
  t.same(Object.keys(job.result.stats.peers), [kb], 'every block came through B')
  const out = path.join(dir, 'out-c.img')
  await c.ctlJson('image', 'export', img.root.slice(0, 16), '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})
