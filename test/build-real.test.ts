// Real builds: mmdebstrap against the mirror this host's apt uses, layers in a file store.
// One Debian minbase base is built once and reused by every test below it. Each failure case
// checks that no mount, loop device or active volume is left behind.

import t, { type Test } from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { Builder, type BuildResult } from '../daemon/builder/builder.js'
import { parseSpec, type ImageSpec } from '../daemon/builder/spec.js'
import { createFileStore } from '../daemon/store/file/file-store.js'
import type { LayerStore, PrepareOptions } from '../daemon/store/layer-store.js'
import { readFile as debugfsRead } from '../daemon/builder/tools/mke2fs.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { specResolver } from '../testing/sources.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const EXAMPLES = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../examples')
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-build-'))
const storeDir = path.join(dir, 'store')
const workDir = path.join(dir, 'work')
const inner = await createFileStore({ dir: storeDir })
// Counts prepare() per key, so a test can tell a reused layer from a rebuilt one.
const prepared = new Map<string, number>()
const store: LayerStore = {
  backend: inner.backend,
  prepare: (key: string, o: PrepareOptions) => {
    prepared.set(key, (prepared.get(key) ?? 0) + 1)
    return inner.prepare(key, o)
  },
  commit: key => inner.commit(key),
  remove: key => inner.remove(key),
  stat: key => inner.stat(key),
  list: () => inner.list(),
  usage: () => inner.usage(),
  recover: () => inner.recover(),
  close: () => inner.close()
}
const builder = new Builder({ store, workDir })
t.teardown(async () => {
  await assertNothingLeft()
  await fs.rm(dir, { recursive: true, force: true })
})

// Specs are built from daemon-owned copies of their files, as the build service resolves them.
const resolved = await specResolver(dir)
const spec = (o: Record<string, unknown>): Promise<ImageSpec> => resolved(parseSpec(JSON.stringify({ name: 't', release: 'bookworm', size: '2G', ...o }), 'json', { baseDir: dir }))
const example = async (name: string) => resolved(parseSpec(await fs.readFile(path.join(EXAMPLES, name), 'utf8'), name.endsWith('.xml') ? 'xml' : 'json', { baseDir: EXAMPLES }))
const volume = async (key: string) => (await inner.stat(key))!.path

async function assertNothingLeft (): Promise<string[]> {
  const problems: string[] = []
  const mounts = await fs.readFile('/proc/mounts', 'utf8')
  for (const line of mounts.split('\n')) if (line.includes(dir)) problems.push(`mount: ${line}`)
  const loops = await execa('losetup', ['-a'], { reject: false })
  for (const line of String(loops.stdout).split('\n')) if (line.includes(dir)) problems.push(`loop: ${line}`)
  for (const v of await inner.list()) if (v.kind === 'active') problems.push(`active volume: ${v.key}`)
  const scratch = await fs.readdir(workDir).catch(() => [] as string[])
  for (const name of scratch) if (name !== 'apt' && name !== 'layer-use.json') problems.push(`scratch: ${name}`)
  return problems
}

async function fsck (t: Test, key: string): Promise<void> {
  const r = await execa('e2fsck', ['-fn', await volume(key)], { reject: false })
  t.equal(r.exitCode, 0, `e2fsck is clean on ${key.slice(0, 12)}`)
}

async function expectFailure (t: Test, s: ImageSpec, code: string, message?: RegExp): Promise<void> {
  const before = (await inner.list()).map(v => v.key).sort()
  const err = await builder.build(s).then(() => undefined, (e: unknown) => e as { code: string, message: string })
  t.ok(err, 'the build fails')
  t.equal(err?.code, code, err?.message ?? 'no error')
  if (message) t.match(err?.message, message)
  t.same(await assertNothingLeft(), [], 'no mount, loop device, active volume or scratch left')
  t.same((await inner.list()).map(v => v.key).sort(), before, 'no new volume listed')
}

let base: BuildResult

t.test('bookworm minbase: a cold build, then the same request from the cache', async t => {
  const s = await example('bookworm-minbase.json')
  base = await builder.build(s)
  t.equal(base.layers.length, 1)
  t.equal(base.layers[0]!.step, 'base')
  t.equal(base.layers[0]!.cached, false)
  t.equal(base.volumeKey, base.key)
  const info = await inner.stat(base.key)
  t.equal(info?.kind, 'committed')
  t.equal(info?.size, 2 ** 31)
  await fsck(t, base.key)
  const osRelease = await debugfsRead(await volume(base.key), '/usr/lib/os-release')
  t.match(osRelease?.toString(), /bookworm/)
  t.equal(await debugfsRead(await volume(base.key), '/etc/resolv.conf'), undefined, 'the host resolv.conf is not in the image')

  const started = performance.now()
  const again = await builder.build(await example('bookworm-minbase.xml'))
  const ms = performance.now() - started
  t.equal(again.key, base.key, 'the XML spec is the same image')
  t.equal(again.layers[0]!.cached, true)
  t.ok(ms < 500, `a cached request answers at once (${ms.toFixed(1)} ms)`)
  t.equal(prepared.get(base.key), 1)
  t.same(await assertNothingLeft(), [])
})

t.test('+openssh-server reuses the cached base', async t => {
  const baseFile = await fs.stat(await volume(base.key))
  const r = await builder.build(await example('bookworm-ssh.json'))
  t.same(r.layers.map(l => [l.step, l.cached]), [['base', true], ['packages', false]])
  t.equal(r.layers[0]!.key, base.key, 'same base key')
  t.equal(prepared.get(base.key), 1, 'the base layer was not rebuilt')
  const after = await fs.stat(await volume(base.key))
  t.equal(after.mtimeMs, baseFile.mtimeMs, 'the base volume is untouched')
  t.equal(after.ino, baseFile.ino)
  const img = await volume(r.key)
  await fsck(t, r.key)
  const status = (await debugfsRead(img, '/var/lib/dpkg/status'))!.toString()
  t.match(status, /Package: openssh-server\nStatus: install ok installed/)
  const keys = await execa('debugfs', ['-R', 'ls -l /etc/ssh', img], { reject: false })
  t.notMatch(String(keys.stdout), /ssh_host_\w+_key/, 'no host keys baked into the image')
  t.equal((await debugfsRead(img, '/etc/machine-id'))?.toString() ?? 'uninitialized\n', 'uninitialized\n')
  t.equal(await debugfsRead(img, '/usr/sbin/policy-rc.d'), undefined, 'policy-rc.d is gone again')
  t.same(await assertNothingLeft(), [])
})

t.test('a files step, read back with debugfs; concurrent requests share one job', async t => {
  const s = await example('bookworm-files.json')
  const [a, b] = await Promise.all([builder.build(s), builder.build(s)])
  t.equal(a.key, b.key)
  t.same(a.layers.map(l => l.step), ['base', 'files', 'scripts'])
  for (const l of a.layers) t.ok((prepared.get(l.key) ?? 0) <= 1, `${l.step} prepared at most once`)
  const img = await volume(a.key)
  await fsck(t, a.key)
  t.equal((await debugfsRead(img, '/etc/motd'))?.toString(), 'Built by osfarm.\n')
  t.equal((await debugfsRead(img, '/usr/local/bin/hello'))?.toString(), '#!/bin/sh\necho hello from osfarm\n')
  const st = String((await execa('debugfs', ['-R', 'stat /etc/osfarm/app.conf', img])).stdout)
  t.match(st, /Mode:\s+0640/)
  t.match(st, /User:\s+0\s+Group:\s+4\b/, 'owner root, group adm (by name, from the image)')
  t.match(st, /mtime: 0x659200(00|80):/i, 'mtime is the build epoch')
  t.same(await assertNothingLeft(), [])
})

t.test('a script step changes the image; a later change in scripts reuses the files layer', async t => {
  const files = [{ path: '/etc/greeting', content: 'hi\n' }]
  const one = await builder.build(await spec({ files, scripts: [{ name: 'mark', content: 'cat /etc/greeting > /root/from-script\nid -u >> /root/from-script\n' }] }))
  t.equal((await debugfsRead(await volume(one.key), '/root/from-script'))?.toString(), 'hi\n0\n')
  const two = await builder.build(await spec({ files, scripts: [{ name: 'mark', content: 'echo changed > /root/from-script\n' }] }))
  t.same(two.layers.map(l => l.cached), [true, true, false], 'only the scripts layer is built')
  t.equal(two.layers[1]!.key, one.layers[1]!.key)
})

t.test('the same steps built twice give byte-identical layers', async t => {
  const s = await spec({ files: [{ path: '/etc/twice', content: 'same\n' }], scripts: ['echo twice > /root/twice'] })
  const first = await builder.build(s)
  const hasher = new BlockHasher(2)
  t.teardown(() => hasher.close())
  const m1 = await hasher.indexFile(await volume(first.key))
  for (const l of first.layers.slice(1).reverse()) await inner.remove(l.key)
  const second = await builder.build(s)
  t.equal(second.key, first.key)
  const m2 = await hasher.indexFile(await volume(second.key))
  let same = 0
  let nonZero = 0
  for (let i = 0; i < m1.hashes.length; i += 32) {
    const a = m1.hashes.subarray(i, i + 32)
    if (a.every(x => x === 0)) continue
    nonZero++
    if (a.equals(m2.hashes.subarray(i, i + 32))) same++
  }
  const share = same / nonZero
  t.comment(`rebuilt files+scripts layers: ${same}/${nonZero} non-zero blocks identical (${(share * 100).toFixed(2)}%)`)
  t.equal(share, 1, 'every block is the same')
  t.ok(m1.root.equals(m2.root), 'the same manifest root')
})

t.test('bad input fails cleanly with a clear code', async t => {
  await t.test('an unknown package', async t => expectFailure(t, await spec({ packages: ['osfarm-no-such-package'] }), 'PACKAGE_NOT_FOUND', /osfarm-no-such-package/))
  await t.test('a script that exits non-zero', async t => expectFailure(t, await spec({ scripts: [{ name: 'boom', content: 'echo going down\nexit 3\n' }] }), 'SCRIPT_FAILED', /boom exited with 3/))
  await t.test('an unreachable mirror', async t => expectFailure(t, await spec({ mirror: 'http://127.0.0.1:1/debian' }), 'MIRROR_UNREACHABLE'))
  await t.test('a size too small for the content', async t => {
    const tarball = await makeRootfs(path.join(dir, 'big-rootfs'), 40 << 20)
    await expectFailure(t, await resolved(parseSpec(JSON.stringify({ name: 'small', flavour: 'rootfs', rootfs: tarball, size: '32M' }), 'json')), 'SIZE_TOO_SMALL', /MiB/)
  })
  await t.test('a file where the image has a directory', async t => expectFailure(t, await spec({ files: [{ path: '/etc', content: 'x' }] }), 'BUILD_FAILED', /is a directory/))
  await t.test('an owner the image does not know', async t => expectFailure(t, await spec({ files: [{ path: '/x', content: 'x', owner: 'nobody-here' }] }), 'BUILD_FAILED', /no user nobody-here/))
})

t.test('a cancelled build stops and leaves nothing behind', async t => {
  const before = (await inner.list()).length
  const ac = new AbortController()
  const s = await spec({ scripts: [{ name: 'slow', content: 'sleep 60\n' }] })
  const building = builder.build(s, { signal: ac.signal, onProgress: (i, phase) => { if (phase === 'scripts') setTimeout(() => ac.abort(), 300) } })
  const started = performance.now()
  await t.rejects(building, { code: 'JOB_CANCELLED' })
  t.ok(performance.now() - started < 20000, 'cancelled well before the script would end')
  t.same(await assertNothingLeft(), [])
  t.equal((await inner.list()).length, before)
})

t.test('a build cancelled in the middle of mmdebstrap leaves nothing mounted or on disk', async t => {
  const before = (await inner.list()).length
  const ac = new AbortController()
  const s = await spec({ size: '1G' }) // another base: not in the cache
  const building = builder.build(s, { signal: ac.signal, onLog: line => { if (/installing essential/.test(line)) ac.abort() } })
  await t.rejects(building, { code: 'JOB_CANCELLED' })
  t.same(await assertNothingLeft(), [])
  t.equal((await inner.list()).length, before)
})

t.test('rootfs flavour: a tarball base, files and a busybox script, no network', async t => {
  const tarball = await makeRootfs(path.join(dir, 'rootfs'), 0)
  const s = await resolved(parseSpec(JSON.stringify({
    name: 'tiny', flavour: 'rootfs', rootfs: tarball, size: '64M',
    files: [{ path: '/etc/motd', content: 'tiny\n' }],
    scripts: ['echo "made by $(cat /etc/motd)" > /made']
  }), 'json'))
  const r = await builder.build(s)
  t.same(r.layers.map(l => l.step), ['base', 'files', 'scripts'])
  t.equal((await debugfsRead(await volume(r.key), '/made'))?.toString(), 'made by tiny\n')
  await fsck(t, r.key)
  t.same(await assertNothingLeft(), [])
})

// A busybox rootfs tarball (plus `filler` bytes).
function makeRootfs (at: string, filler: number): Promise<string> {
  return busyboxRootfs(path.join(at, 'root'), path.join(at, 'rootfs.tar'), async root => {
    if (filler) await fs.writeFile(path.join(root, 'filler'), Buffer.alloc(filler, 7))
  })
}
