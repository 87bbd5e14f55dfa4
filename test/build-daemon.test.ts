// image.build through the real osfarmd and osfarmctl. The specs use the rootfs flavour on a
// tiny busybox tarball, so no mirror is needed and the test is quick.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { startDaemon, tempDir } from '../testing/daemon.js'
import type { BuildResultInfo, ImageInfo, JobInfo } from '../protocol/rpc.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const dir = await tempDir('osfarm-build-daemon-')
const d = await startDaemon({ dir })
t.teardown(async () => {
  await d.stop()
  await fs.rm(dir, { recursive: true, force: true })
})

await busyboxRootfs(path.join(dir, 'rootfs'), path.join(dir, 'rootfs.tar'))

const writeSpec = async (name: string, spec: Record<string, unknown>) => {
  const file = path.join(dir, name)
  await fs.writeFile(file, JSON.stringify({ flavour: 'rootfs', rootfs: 'rootfs.tar', size: '64M', ...spec }))
  return file
}

t.test('build --wait registers the image with its layers; a repeat is cached', async t => {
  const spec = await writeSpec('tiny.json', { name: 'tiny', files: [{ path: '/etc/motd', content: 'tiny\n' }], scripts: ['cat /etc/motd > /copied'] })
  const r = await d.ctlJson<BuildResultInfo>('build', spec, '--wait')
  t.same(r.layers.map(l => [l.step, l.cached]), [['base', false], ['files', false], ['scripts', false]])
  t.equal(r.cached, false)
  t.equal(r.image.name, 'tiny')
  t.equal(r.image.origin, 'build')
  t.equal(r.image.volume, r.key)
  t.same(r.image.layers, r.layers.map(l => l.key))
  t.match(r.image.root, /^[0-9a-f]{64}$/, 'indexed into a manifest like an import')

  const list = await d.ctlJson<ImageInfo[]>('image', 'ls')
  t.same(list.map(i => i.name), ['tiny'])

  const again = await d.ctlJson<BuildResultInfo>('build', spec, '--wait')
  t.equal(again.cached, true)
  t.equal(again.image.id, r.image.id, 'the same image')
  t.equal((await d.ctlJson<ImageInfo[]>('image', 'ls')).length, 1)

  const text = await d.ctl('build', spec, '--wait')
  t.equal(text.exitCode, 0)
  t.match(text.stdout, /cached tiny/)
  t.match(text.stdout, /scripts\s+\S+\s+cached/)

  const other = await d.ctlJson<BuildResultInfo>('build', await writeSpec('tiny2.json', { name: 'tiny2', files: [{ path: '/etc/motd', content: 'tiny\n' }], scripts: ['echo other > /copied'] }), '--wait')
  t.same(other.layers.map(l => l.cached), [true, true, false], 'lower layers reused across images')
  t.equal(other.layers[1]!.key, r.layers[1]!.key)

  // image rm frees the layers only that image used; the shared ones stay for tiny.
  const volumes = () => fs.readdir(path.join(d.dataDir, 'volumes'))
  t.ok((await volumes()).includes(`${other.key}.img`))
  const rm = await d.ctl('image', 'rm', 'tiny2')
  t.equal(rm.exitCode, 0)
  for (let i = 0; i < 50 && (await volumes()).includes(`${other.key}.img`); i++) await new Promise(resolve => setTimeout(resolve, 100))
  const left = await volumes()
  t.notOk(left.includes(`${other.key}.img`), 'the unshared scripts layer is freed')
  for (const l of r.layers) t.ok(left.includes(`${l.key}.img`), `${l.step} layer of tiny kept`)
})

t.test('labels: the spec\'s, with --label over them; fixed once the image exists', async t => {
  const motd = [{ path: '/etc/motd', content: 'labelled\n' }]
  const spec = await writeSpec('labelled.json', { name: 'labelled', labels: ['channel=stable', 'team=web'], files: motd })
  const r = await d.ctlJson<BuildResultInfo>('build', spec, '--wait', '--label', 'channel=beta')
  t.same(r.image.labels, ['team=web', 'channel=beta'], 'a --label replaces the spec\'s label with its key')
  t.same((await d.ctlJson<ImageInfo>('image', 'show', 'labelled')).labels, r.image.labels, 'in the catalog')

  const same = await d.ctlJson<BuildResultInfo>('build', spec, '--wait', '--label', 'channel=beta')
  t.equal(same.cached, true, 'the same labels again: cached')
  const unlabelled = await d.ctlJson<BuildResultInfo>('build', await writeSpec('unlabelled.json', { name: 'labelled', files: motd }), '--wait')
  t.equal(unlabelled.cached, true, 'no labels at all: cached')
  t.same(unlabelled.image.labels, r.image.labels, 'and the labels are left alone')

  const changed = await d.ctl('build', spec, '--wait')
  t.equal(changed.exitCode, 73)
  t.match(changed.stderr, /NAME_IN_USE: .*labels team=web,channel=beta, not channel=stable,team=web/)
  const bad = await d.ctl('build', spec, '--label', 'team web')
  t.equal(bad.exitCode, 64)
  t.match(bad.stderr, /BAD_PARAMS: .*"team web"/)
  t.same((await d.ctlJson<ImageInfo>('image', 'show', 'labelled')).labels, r.image.labels, 'unchanged')
})

t.test('without --wait the job id comes back at once', async t => {
  const spec = await writeSpec('quick.json', { name: 'quick' })
  const r = await d.ctl('build', spec)
  t.equal(r.exitCode, 0)
  const id = r.stdout.trim()
  t.match(id, /^[0-9a-f]+$/)
  const end = await d.ctlJson<JobInfo>('job', 'watch', id)
  t.equal(end.state, 'done')
  t.equal(end.kind, 'build')
})

t.test('a bad spec is refused by the call: no job, no image', async t => {
  const jobs = (await d.ctlJson<JobInfo[]>('job', 'ls')).length
  const images = (await d.ctlJson<ImageInfo[]>('image', 'ls')).length
  const bad = await writeSpec('bad.json', { name: 'bad', colour: 'blue', files: [{ path: '/../../etc/passwd', content: 'x' }] })
  const r = await d.ctl('build', bad, '--wait')
  t.equal(r.exitCode, 65)
  t.match(r.stderr, /SPEC_INVALID: colour: unknown field/)
  t.match(r.stderr, /files\[0\]\.path/)
  const xml = path.join(dir, 'bad.xml')
  await fs.writeFile(xml, '<image name="x">\n<flavour>rootfs</flavour>\n<size>64M</sise>\n</image>\n')
  const rx = await d.ctl('build', xml)
  t.equal(rx.exitCode, 65)
  t.match(rx.stderr, /line 3/)
  t.equal((await d.ctlJson<JobInfo[]>('job', 'ls')).length, jobs, 'no job started')
  t.equal((await d.ctlJson<ImageInfo[]>('image', 'ls')).length, images, 'no image listed')
})

t.test('a name taken by another spec, and a failing script', async t => {
  const taken = await d.ctl('build', await writeSpec('taken.json', { name: 'tiny', scripts: ['echo different'] }))
  t.equal(taken.exitCode, 73)
  t.match(taken.stderr, /NAME_IN_USE/)
  const images = (await d.ctlJson<ImageInfo[]>('image', 'ls')).length
  const fails = await d.ctl('build', await writeSpec('fails.json', { name: 'fails', scripts: [{ name: 'boom', content: 'exit 4' }] }), '--wait')
  t.equal(fails.exitCode, 65)
  t.match(fails.stderr, /SCRIPT_FAILED: script boom exited with 4/)
  t.equal((await d.ctlJson<ImageInfo[]>('image', 'ls')).length, images, 'no image listed')
  const mounts = await fs.readFile('/proc/mounts', 'utf8')
  t.notMatch(mounts, dir, 'nothing left mounted')
})
