import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import crypto from 'node:crypto'
import { execa } from 'execa'
import { joinFleet, makeImagePair, sha256, startTestnet, tempDir } from '../testing/fleet.js'
import { startDaemon, type TestDaemon } from '../testing/daemon.js'

type Teardown = (fn: () => unknown) => void

// A reflink filesystem (XFS on a loop device) when this runs as root with mkfs.xfs, so points
// are reflink clones and indexed from extent maps; else a plain temp dir (copies, still correct).
async function workDir (teardown: Teardown): Promise<{ dir: string, reflink: boolean }> {
  const base = await tempDir('osfarm-prestage-')
  teardown(() => fs.rm(base, { recursive: true, force: true }))
  if (process.getuid?.() !== 0) return { dir: base, reflink: false }
  const img = path.join(base, 'xfs.img')
  const mnt = path.join(base, 'mnt')
  await fs.mkdir(mnt)
  await execa('truncate', ['-s', '2G', img])
  const mk = await execa('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', img], { reject: false })
  if (mk.exitCode !== 0) return { dir: base, reflink: false }
  const mount = await execa('mount', ['-o', 'loop', img, mnt], { reject: false })
  if (mount.exitCode !== 0) return { dir: base, reflink: false }
  teardown(() => execa('umount', ['-l', mnt], { reject: false }))
  return { dir: mnt, reflink: true }
}

// Overwrites `count` distinct random blocks of the disk with new data (a tenth of them zeros).
async function change (disk: string, count: number, seed: string): Promise<Set<number>> {
  const fh = await fs.open(disk, 'r+')
  const blocks = Math.floor((await fh.stat()).size / 4096)
  const picked = new Set<number>()
  let k = 0
  while (picked.size < count) {
    const h = crypto.createHash('sha256').update(`${seed}/${k++}`).digest()
    picked.add(h.readUInt32BE(0) % blocks)
  }
  let n = 0
  for (const i of picked) {
    const data = n++ % 10 === 9 ? Buffer.alloc(4096) : crypto.createHash('sha512').update(`${seed}:${i}`).digest().toString('base64').repeat(47).slice(0, 4096)
    await fh.write(typeof data === 'string' ? Buffer.from(data) : data, 0, 4096, i * 4096)
  }
  await fh.sync()
  await fh.close()
  return picked
}

async function bytesFrom (d: TestDaemon, key: string): Promise<number> {
  const peers = await d.ctlJson('peer', 'ls')
  return peers.find((p: any) => p.key === key)?.bytesIn ?? 0
}

t.test('a disk made from an image is staged on a host holding the image, synced after more changes, identical each time', async t => {
  const { dir, reflink } = await workDir(t.teardown)
  t.comment(reflink ? 'on XFS with reflink' : 'on a filesystem without reflink (points are copies)')
  const { bootstrap } = await startTestnet(t.teardown)
  const hosts: TestDaemon[] = []
  for (const name of ['a', 'b']) {
    await fs.mkdir(path.join(dir, name))
    const d = await startDaemon({ dir: path.join(dir, name) })
    t.teardown(() => d.stop('SIGKILL'))
    hosts.push(d)
  }
  const [a, b] = hosts as [TestDaemon, TestDaemon]
  const [keyA, keyB] = (await joinFleet([a, b], bootstrap, { connected: true })).keys as [string, string]

  // The image on both hosts; the VM's disk on A is a clone of A's copy of it, then written to.
  const pair = await makeImagePair(dir, 16384, 20, 31)
  const img = await a.ctlJson('image', 'import', pair.base, '--name', 'debian')
  await b.ctlJson('image', 'import', pair.base, '--name', 'debian')
  const disk = path.join(dir, 'vm-disk.raw')
  await execa('cp', ['--reflink=auto', '--sparse=always', path.join(a.dataDir, 'volumes', `${img.volume}.img`), disk])
  await fs.chmod(disk, 0o644)
  const blocks = 16384
  const first1 = await change(disk, blocks * 2 / 100, 'one')

  // 1. Stage.
  const staged = await a.ctlJson('prestage', 'start', disk, '--to', keyB, '--base', 'debian')
  t.equal(staged.state, 'staged')
  const p1 = staged.points[0]
  t.equal(p1.seq, 1)
  t.equal(p1.capture, reflink ? 'reflink' : 'copy')
  t.equal(p1.index, 'extents')
  t.ok(p1.changedBlocks <= first1.size && p1.changedBlocks >= first1.size * 0.95, `changed blocks ${p1.changedBlocks} ≈ ${first1.size} written`)
  if (reflink) t.ok(p1.hashedBlocks <= first1.size * 1.1 + 16, `only changed extents were hashed (${p1.hashedBlocks} blocks for ${first1.size} written)`)
  const s1 = staged.target.stats
  t.ok(s1.received <= first1.size, `target received ${s1.received} blocks, at most the ${first1.size} changed`)
  t.ok(s1.inPlace + s1.copiedLocal > blocks / 2, 'the target built on its copy of the image')
  const onB = (await b.ctlJson('prestage', 'ls')).find((p: any) => p.id === staged.id)
  t.equal(onB.role, 'target')
  t.equal(onB.state, 'staged')
  t.equal(await sha256(onB.path), await sha256(disk), 'the target\'s copy is byte-identical to the disk at point 1')

  // 2. More changes, then sync: only the changed blocks cross the wire.
  const second2 = await change(disk, blocks / 100, 'two')
  const inBefore = await bytesFrom(b, keyA)
  const synced = await a.ctlJson('prestage', 'sync', staged.id)
  const inAfter = await bytesFrom(b, keyA)
  const p2 = synced.points[synced.points.length - 1]
  t.equal(p2.seq, 2)
  t.equal(synced.points.length, 1, 'the source keeps only the newest point')
  t.ok(p2.changedBlocks <= second2.size, `changed since point 1: ${p2.changedBlocks} of ${second2.size} written`)
  if (reflink) t.ok(p2.hashedBlocks <= second2.size * 1.1 + 16, `sync hashed only what changed (${p2.hashedBlocks} blocks)`)
  const s2 = synced.target.stats
  const changedBytes = second2.size * 4096
  t.ok(s2.received <= second2.size, `target received ${s2.received} blocks for ${second2.size} changed`)
  t.ok(s2.manifestBytes < (blocks * 32) / 4, `the manifest came as a delta (${s2.manifestBytes} bytes)`)
  const wire = inAfter - inBefore
  t.ok(wire < changedBytes * 1.2 + 128 * 1024, `bytes on the wire at sync (${wire}) ≈ the changed blocks (${changedBytes}), not the disk (${blocks * 4096})`)
  t.comment(`sync: ${second2.size} blocks changed, ${s2.received} received, ${wire} bytes in from the source (payload ${s2.wireBytes}, manifest ${s2.manifestBytes}), ${s2.elapsedMs} ms`)
  const onB2 = await b.ctlJson('prestage', 'show', staged.id)
  t.equal(onB2.points.length, 1, 'the target keeps only the newest point')
  t.equal(await sha256(onB2.path), await sha256(disk), 'the target\'s copy is byte-identical to the disk at point 2')

  // 3. Cancel on the source: both sides drop their points.
  await a.ctlJson('prestage', 'cancel', staged.id)
  const gone = await (async () => {
    for (let i = 0; i < 100; i++) {
      const r = await b.ctlJson('prestage', 'show', staged.id)
      if (r.state === 'cancelled') return r
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  })()
  t.equal(gone?.state, 'cancelled', 'the target heard the cancel')
  t.notOk(gone?.path, 'and dropped its copy')
  t.equal(await fs.stat(onB2.path).then(() => true, () => false), false, 'the copy\'s volume is gone')
})

t.test('prestage of an image the target lacks: it comes from every holder', async t => {
  const { bootstrap } = await startTestnet(t.teardown)
  const hosts: TestDaemon[] = []
  for (let i = 0; i < 3; i++) {
    const d = await startDaemon()
    t.teardown(async () => { await d.stop('SIGKILL'); await fs.rm(d.dir, { recursive: true, force: true }) })
    hosts.push(d)
  }
  const [a, b, c] = hosts as [TestDaemon, TestDaemon, TestDaemon]
  const { keys } = await joinFleet(hosts, bootstrap, { connected: true })
  const dir = await tempDir('osfarm-prestage2-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 8192, 20, 41)
  await a.ctlJson('image', 'import', pair.base, '--name', 'base')
  await c.ctlJson('image', 'import', pair.base, '--name', 'base')
  const disk = path.join(dir, 'disk.raw')
  await execa('cp', ['--sparse=always', pair.base, disk])
  const changed = await change(disk, 200, 'x')
  const staged = await a.ctlJson('prestage', 'start', disk, '--to', keys[1]!, '--base', 'base')
  t.equal(staged.state, 'staged')
  const images = await b.ctlJson('image', 'ls')
  t.ok(images.some((i: any) => i.name === 'base'), 'the target fetched the base image first')
  const fetchJob = (await b.ctlJson('job', 'ls')).find((j: any) => j.kind === 'fetch' && j.target === 'base')
  t.equal(Object.keys(fetchJob.result.stats.peers).length, 2, 'the base image came from both holders')
  t.ok(staged.target.stats.received <= changed.size, 'then only the changed blocks came from the source')
  const onB = await b.ctlJson('prestage', 'show', staged.id)
  t.equal(await sha256(onB.path), await sha256(disk), 'byte-identical')
  t.notOk((await c.ctlJson('image', 'ls')).some((i: any) => i.name.startsWith('prestage')), 'the third host was never offered the disk')
})
