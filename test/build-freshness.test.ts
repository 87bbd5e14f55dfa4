// Images that stay up to date: a real signed apt repository on 127.0.0.1 (dpkg-deb,
// apt-ftparchive, gpg) publishes a package at version 1, then 2, and the same request builds a
// new version of the image with the base layer from the cache; a third is a cache hit; a
// pinned spec stays on version 1 without a request; --check and image outdated name the layer
// a rebuild would redo; with the repository stopped the cached image answers, with a warning.
// The base comes from the mirror this host's apt uses.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { createAptRepo } from '../testing/apt-repo.js'
import { RepoStates } from '../daemon/builder/repo-state.js'
import type { BuildCheckResult, BuildResultInfo, ImageInfo, OutdatedInfo } from '../protocol/rpc.js'

const dir = await tempDir('osfarm-fresh-')
const repo = await createAptRepo(path.join(dir, 'apt'))
await repo.publish({ 'osfarm-hello': '1' })
// Checks answer for 1 s here (60 by default), so the test need not wait a minute.
await fs.writeFile(path.join(dir, 'osfarmd.json'), JSON.stringify({ mirrorCheckSeconds: 1 }))
const d: TestDaemon = await startDaemon({ dir: path.join(dir, 'd'), args: ['--config', path.join(dir, 'osfarmd.json')] })
t.teardown(async () => {
  await d.stop()
  await repo.stop().catch(() => {})
  await fs.rm(dir, { recursive: true, force: true })
})

const spec = (extra: Record<string, unknown> = {}) => ({
  name: 'fresh', release: 'bookworm', size: '2G',
  repositories: [{ uri: repo.uri, suites: [repo.suite], components: ['main'], key: repo.key }],
  packages: ['osfarm-hello'],
  ...extra
})
const specFile = path.join(dir, 'fresh.json')
await fs.writeFile(specFile, JSON.stringify(spec()))

async function build (file = specFile, ...args: string[]): Promise<{ r: BuildResultInfo, stderr: string }> {
  const out = await d.ctl('build', file, '--wait', '--json', ...args)
  if (out.exitCode !== 0) throw new Error(`build failed (${out.exitCode}): ${out.stderr}`)
  return { r: JSON.parse(out.stdout), stderr: out.stderr }
}

async function versionIn (image: ImageInfo): Promise<string> {
  const found = await execa('find', [d.dataDir, '-name', `${image.volume}.img`])
  const file = String(found.stdout).split('\n')[0]!
  const r = await execa('debugfs', ['-R', 'cat /usr/share/osfarm-hello/version', file])
  return String(r.stdout).trim()
}

const passed = () => new Promise(resolve => setTimeout(resolve, 1500))

let v1: BuildResultInfo
let v2: BuildResultInfo
let beforeV2 = ''

t.test('a check costs one request per suite, and a burst makes one', async t => {
  const states = new RepoStates({ ttlMs: 60_000 })
  const before = repo.requests()
  const all = await Promise.all(Array.from({ length: 20 }, () => states.check({ uri: repo.uri, suite: repo.suite })))
  t.equal(new Set(all).size, 1)
  t.equal(repo.requests() - before, 1, 'twenty concurrent checks made one GET (InRelease)')
  const started = performance.now()
  await states.check({ uri: repo.uri, suite: repo.suite })
  t.comment(`a cached check: ${(performance.now() - started).toFixed(3)} ms`)
  t.equal(repo.requests() - before, 1)
})

t.test('version 1 published: the image holds it', async t => {
  ;({ r: v1 } = await build())
  t.same(v1.layers.map(l => [l.step, l.cached]), [['base', false], ['packages', false]])
  t.equal(v1.image.version, 1)
  t.equal(await versionIn(v1.image), '1')
  t.ok(v1.image.inputs?.some(i => i.uri === repo.uri && i.suite === repo.suite && i.layer === 1), 'the packages layer read the test repository')
  t.ok(v1.image.inputs?.some(i => i.layer === 0), 'the base read the host mirror')
})

t.test('version 2 published: the same request builds version 2 on the cached base', async t => {
  await passed()
  beforeV2 = new Date().toISOString()
  await passed()
  await repo.publish({ 'osfarm-hello': '2' })
  await passed()
  const check = await d.ctl('build', specFile, '--check', '--json')
  t.equal(check.exitCode, 1, '--check exits 1: outdated')
  const c = JSON.parse(check.stdout) as BuildCheckResult
  t.equal(c.upToDate, false)
  t.same(c.layers.map(l => [l.step, l.cached]), [['base', true], ['packages', false]], '--check: the packages layer would be rebuilt, the base is cached')
  t.same(c.changed.map(ch => [ch.uri, ch.suite, ch.layer]), [[repo.uri, repo.suite, 1]])
  const outdated = await d.ctl('image', 'outdated', '--json')
  t.equal(outdated.exitCode, 1)
  const o = (JSON.parse(outdated.stdout) as OutdatedInfo[]).find(x => x.image.name === 'fresh')!
  t.equal(o.outdated, true)
  t.same(o.rebuild, ['packages'], 'image outdated names the packages layer')

  ;({ r: v2 } = await build())
  t.same(v2.layers.map(l => [l.step, l.cached]), [['base', true], ['packages', false]], 'only the packages layer is rebuilt')
  t.equal(v2.layers[0]!.key, v1.layers[0]!.key, 'the same base layer')
  t.equal(v2.image.version, 2)
  t.not(v2.image.root, v1.image.root)
  t.equal(await versionIn(v2.image), '2')
  const list = await d.ctlJson<ImageInfo[]>('image', 'ls')
  t.same(list.filter(i => i.name === 'fresh').map(i => i.version).sort(), [1, 2], 'image ls shows both versions')
  t.equal((await d.ctlJson<ImageInfo>('image', 'show', 'fresh')).id, v2.image.id, 'NAME is the newest')
  t.equal((await d.ctlJson<ImageInfo>('image', 'show', 'fresh@1')).id, v1.image.id, 'NAME@1 the first')
  const table = await d.ctl('image', 'ls')
  t.match(table.stdout, /VERSION/)
})

t.test('a third request is a cache hit', async t => {
  await passed()
  const { r } = await build()
  t.equal(r.cached, true)
  t.equal(r.image.id, v2.image.id)
  const check = await d.ctl('build', specFile, '--check')
  t.equal(check.exitCode, 0, '--check: up to date')
  t.match(check.stdout, /up to date/)
})

t.test('a pinned spec stays on version 1, with no request to the repositories', async t => {
  const pinned = path.join(dir, 'pinned.json')
  await fs.writeFile(pinned, JSON.stringify(spec({ snapshot: beforeV2 })))
  const before = repo.requests()
  const { r } = await build(pinned)
  t.equal(r.cached, true)
  t.equal(r.image.id, v1.image.id, 'the spec field pins version 1')
  t.equal(r.key, v1.key)
  const flag = await build(specFile, '--snapshot', beforeV2)
  t.equal(flag.r.image.id, v1.image.id, 'build --snapshot pins it too')
  const offline = await build(specFile, '--snapshot', 'offline')
  t.equal(offline.r.image.id, v2.image.id, 'offline: the newest state seen, version 2')
  t.equal(repo.requests(), before, 'no request reached the repository')
})

t.test('the repository stopped: the cached image, with a warning in the job and the CLI', async t => {
  await repo.publish({ 'osfarm-hello': '3' })
  await repo.stop()
  await passed()
  const { r, stderr } = await build(specFile, '--logs')
  t.equal(r.image.id, v2.image.id, 'the newest version answers')
  t.match(r.warnings?.join('\n'), /mirror unreachable \(.*127\.0\.0\.1.*\): cached image from \d{4}-/)
  t.match(stderr, /warning: mirror unreachable .*cached image from/)
  const jobs = await d.ctlJson<Array<{ id: string, kind: string }>>('job', 'ls')
  t.ok(jobs.length > 0)
  const check = await d.ctl('build', specFile, '--check')
  t.match(check.stderr, /mirror unreachable/)
})
