// The local API's trust boundary, tried by a real unprivileged user in the socket group, over
// the socket (osfarmctl, and raw JSON-RPC that bypasses it) and over the web console: every way
// of making osfarmd open a host path for them is refused (PERMISSION_DENIED, exit 77) with
// nothing read, created or registered; their own work (import and export of their files, stdin
// and stdout, a build from their own source files) succeeds, byte-identical and sparse.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { allocatedBytes, makeImage } from '../testing/images.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const tag = randomBytes(3).toString('hex')
const GROUP = `osfarmt${tag}`
const USER = `osfarmu${tag}`

await execa('groupadd', [GROUP])
await execa('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', '--gid', GROUP, USER])
t.teardown(async () => {
  await execa('userdel', [USER], { reject: false })
  await execa('groupdel', [GROUP], { reject: false })
})
const uid = Number((await execa('id', ['-u', USER])).stdout)
const gid = Number((await execa('id', ['-g', USER])).stdout)

const dir = await tempDir('osfarm-trust-')
t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
// The socket's directory must be reachable; the data dir stays root's (osfarmd makes it 0700).
await fs.chmod(dir, 0o711)
const home = path.join(dir, 'home')
await fs.mkdir(home, { mode: 0o700 })
await fs.chown(home, uid, gid)
const secrets = path.join(dir, 'root-only')
await fs.mkdir(secrets, { mode: 0o700 })
const secret = path.join(secrets, 'secret.img')
await fs.writeFile(secret, Buffer.alloc(1 << 20, 0x5a), { mode: 0o600 })
const rootTarget = path.join(secrets, 'written-by-osfarm')
const config = path.join(dir, 'osfarmd.json')
await fs.writeFile(config, JSON.stringify({ socketGroup: GROUP, socketMode: '0660', http: { listen: '127.0.0.1:0' } }))
const d = await startDaemon({ dir, args: ['-c', config] })
t.teardown(() => d.stop())
const consoleUrl = /msg="web console listening".* url=(\S+)/.exec(d.output())![1]!

// A command as the user. The repository may lie under a directory they cannot enter (a CI
// clone under /root): a private mount namespace binds it where they can, and goes with the command.
function asUser (cmd: string, opts: { stdin?: string, stdout?: string } = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  const view = path.join(dir, 'repo')
  const script = `mount --bind ${q(REPO)} ${q(view)} && exec setpriv --reuid=${uid} --regid=${gid} --init-groups env -u NODE_OPTIONS HOME=${q(home)} sh -c ${q(`cd ${q(home)} && ${cmd}`)}`
  return new Promise((resolve, reject) => {
    const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OSFARMCTL: path.join(view, 'dist/client/main.js') } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', x => { stdout += x })
    child.stderr.on('data', x => { stderr += x })
    child.once('error', reject)
    child.once('exit', code => resolve({ code: code ?? -1, stdout, stderr }))
  })
}
await fs.mkdir(path.join(dir, 'repo'))
const ctl = (args: string) => asUser(`${q(process.execPath)} "$OSFARMCTL" --socket ${q(d.socket)} ${args}`)

// Raw JSON-RPC from the user's process to the socket: what a client other than osfarmctl can ask.
async function rawCall (method: string, params: unknown): Promise<{ code?: string, message?: string, result?: unknown }> {
  const js = `const c=require('net').connect(${JSON.stringify(d.socket)});let b='';c.on('data',x=>{b+=x;const i=b.indexOf('\\n');if(i>=0){process.stdout.write(b.slice(0,i));c.end()}});c.write(JSON.stringify({jsonrpc:'2.0',id:1,method:${JSON.stringify(method)},params:${JSON.stringify(params)}})+'\\n')`
  const r = await asUser(`${q(process.execPath)} -e ${q(js)}`)
  const answer = JSON.parse(r.stdout)
  return answer.error ? { code: answer.error.data?.code, message: answer.error.message } : { result: answer.result }
}

async function httpCall (method: string, params: unknown): Promise<{ code?: string, message?: string }> {
  const js = `fetch(${JSON.stringify(new URL('rpc', consoleUrl).href)},{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify({jsonrpc:'2.0',id:1,method:${JSON.stringify(method)},params:${JSON.stringify(params)}})}).then(r=>r.text()).then(x=>process.stdout.write(x))`
  const r = await asUser(`${q(process.execPath)} -e ${q(js)}`)
  const answer = JSON.parse(r.stdout)
  return { code: answer.error?.data?.code, message: answer.error?.message }
}

function q (s: string): string {
  return `'${s.replace(/'/g, '\'\\\'\'')}'`
}

async function snapshot (daemon: TestDaemon): Promise<string> {
  return JSON.stringify((await daemon.ctlJson('image', 'ls')).map((i: { name: string, root: string }) => [i.name, i.root]))
}

// A small rootfs-flavour base the user owns (busybox, no network).
async function busyboxTarball (to: string): Promise<void> {
  await busyboxRootfs(path.join(dir, 'bb'), to)
  await fs.chown(to, uid, gid)
}

t.test('the user reaches the socket through its group', async t => {
  const r = await ctl('status --json')
  t.equal(r.code, 0, r.stderr)
  t.equal((await rawCall('daemon.version', {})).result && ((await rawCall('daemon.version', {})).result as { rights: string }).rights, 'user', 'the group socket gives user rights')
})

t.test('every host path the user names is refused, and nothing is read, written or registered', async t => {
  const before = await snapshot(d)
  const own = path.join(home, 'spec-src.tar')
  await busyboxTarball(own)

  // osfarmctl opens files with the user's rights: the kernel refuses.
  const imp = await ctl(`image import ${q(secret)} --name stolen`)
  t.equal(imp.code, 77, `import of a root-only file: exit 77 (${imp.stderr.trim()})`)
  t.match(imp.stderr, /PERMISSION_DENIED/)
  const prestage = await ctl(`prestage start ${q(secret)} --to somewhere`)
  t.equal(prestage.code, 77, `prestage of a root-owned disk: exit 77 (${prestage.stderr.trim()})`)
  const fleet = await ctl('fleet allow ' + 'a'.repeat(64))
  t.equal(fleet.code, 77, 'the fleet\'s allow-list is root\'s')

  const specFile = (spec: unknown) => { const f = path.join(home, `spec-${randomBytes(3).toString('hex')}.json`); return fs.writeFile(f, JSON.stringify(spec)).then(() => fs.chown(f, uid, gid)).then(() => f) }
  const withSecretFile = await specFile({ name: 'leak1', flavour: 'rootfs', rootfs: own, size: '64M', files: [{ path: '/leak', source: secret }] })
  const b1 = await ctl(`build ${q(withSecretFile)} --wait`)
  t.equal(b1.code, 77, `a spec whose files[].source is root-only: exit 77 (${b1.stderr.trim()})`)
  t.match(b1.stderr, /files\[0\]\.source/, 'the field is named')
  const withSecretRootfs = await specFile({ name: 'leak2', flavour: 'rootfs', rootfs: secret, size: '64M' })
  const b2 = await ctl(`build ${q(withSecretRootfs)} --wait`)
  t.equal(b2.code, 77, `a spec whose rootfs is root-only: exit 77 (${b2.stderr.trim()})`)
  t.match(b2.stderr, /rootfs/)
  const fileMirror = await specFile({ name: 'leak3', release: 'bookworm', mirror: `file://${secrets}/` })
  const b3 = await ctl(`build ${q(fileMirror)} --wait`)
  t.equal(b3.code, 77, `a file: mirror: exit 77 (${b3.stderr.trim()})`)
  t.match(b3.stderr, /mirror/)

  // A client that skips osfarmctl and names the paths itself: osfarmd refuses.
  const calls: Array<[string, string, unknown]> = [
    ['import of a root-only file', 'image.import', { path: secret, name: 'stolen' }],
    ['a spec file on the host', 'image.build', { path: withSecretFile }],
    ['a spec source not uploaded', 'image.build', { spec: JSON.stringify({ name: 'leak1', flavour: 'rootfs', rootfs: own, files: [{ path: '/leak', source: secret }] }) }],
    ['a rootfs not uploaded', 'image.build', { spec: JSON.stringify({ name: 'leak2', flavour: 'rootfs', rootfs: secret }) }],
    ['a spec check that would hash a host file', 'spec.check', { spec: JSON.stringify({ name: 'leak2', flavour: 'rootfs', rootfs: secret }) }],
    ['a file: mirror', 'image.build', { spec: JSON.stringify({ name: 'leak3', release: 'bookworm', mirror: 'file:///etc/' }) }],
    ['a loopback repository', 'image.build', { spec: JSON.stringify({ name: 'leak4', release: 'bookworm', repositories: [{ uri: 'http://127.0.0.1:9/x', suites: ['s'], components: ['main'] }] }) }],
    ['package search of a file: URL', 'package.search', { query: 'x', suite: 'bookworm', uri: 'file:///etc/' }],
    ['prestage of a host disk', 'prestage.start', { disk: secret, to: 'x' }],
    ['a fleet-wide seed policy', 'seed.add', { match: '*', fleet: true }]
  ]
  for (const [what, method, params] of calls) {
    const r = await rawCall(method, params)
    t.equal(r.code, 'PERMISSION_DENIED', `${what}: ${r.message}`)
  }

  // Export over a root-owned path: the user's own rights cannot create it; raw export.path is refused.
  const mine = path.join(home, 'mine.img')
  await makeImage(mine, { blocks: 64 })
  await fs.chown(mine, uid, gid)
  t.equal((await ctl(`image import ${q(mine)} --name mine`)).code, 0, 'a first image of the user\'s own')
  const exp = await ctl(`image export mine -o ${q(rootTarget)}`)
  t.equal(exp.code, 77, `export over a root-owned path: exit 77 (${exp.stderr.trim()})`)
  const rawExp = await rawCall('image.export', { id: 'mine', path: '/etc/cron.d/osfarm-test' })
  t.equal(rawExp.code, 'PERMISSION_DENIED', 'image.export with a path: refused')
  await t.rejects(fs.lstat(rootTarget), 'nothing was written where the user may not write')
  await t.rejects(fs.lstat('/etc/cron.d/osfarm-test'))
  t.same((await fs.readdir(secrets)).sort(), ['secret.img'], 'no temporary file beside it either')

  // The web console gives a loopback user the same rights.
  for (const [what, method, params] of calls.slice(0, 1).concat(calls.slice(5, 10))) {
    const r = await httpCall(method, params)
    t.equal(r.code, 'PERMISSION_DENIED', `console: ${what}: ${r.message}`)
  }
  const httpExp = await httpCall('image.export', { id: 'mine', path: rootTarget })
  t.equal(httpExp.code, 'PERMISSION_DENIED', 'console: export to a host path')

  const after = JSON.parse(await snapshot(d)).map((x: string[]) => x[0])
  t.same(after, [...JSON.parse(before).map((x: string[]) => x[0]), 'mine'], 'the catalog holds only the user\'s own image')
  const failed = (await d.ctlJson('job', 'ls')).filter((j: { state: string }) => j.state !== 'done')
  t.same(failed, [], 'no job was even started for a refused call')
})

t.test('the user\'s own work: import and export of their files, stdin and stdout, byte-identical and sparse', async t => {
  const src = path.join(home, 'disk.raw')
  const data = await makeImage(src, { blocks: 5000, tail: 100 })
  await fs.chown(src, uid, gid)
  const imp = await ctl(`image import ${q(src)} --name own --json`)
  t.equal(imp.code, 0, imp.stderr)
  const img = JSON.parse(imp.stdout)
  t.equal(img.size, data.length)
  t.equal(img.zeroBlocks, 2000, 'zero blocks known as zeros')

  const out = path.join(home, 'out.raw')
  const exp = await ctl(`image export own -o ${q(out)} --json`)
  t.equal(exp.code, 0, exp.stderr)
  t.same(await fs.readFile(out), data, 'exported byte-identical')
  t.ok(await allocatedBytes(out) <= await allocatedBytes(src) + 65536, `and as sparse as the source (${await allocatedBytes(out)} vs ${await allocatedBytes(src)} bytes allocated)`)
  t.equal((await fs.stat(out)).uid, uid, 'written with the user\'s own rights')

  const fromStdin = await asUser(`${q(process.execPath)} "$OSFARMCTL" --socket ${q(d.socket)} image import - --name piped --size ${data.length} --json < ${q(src)}`)
  t.equal(fromStdin.code, 0, fromStdin.stderr)
  t.equal(JSON.parse(fromStdin.stdout).root, img.root, 'stdin (a file behind it) gives the same image')
  const fromPipe = await asUser(`cat ${q(src)} | ${q(process.execPath)} "$OSFARMCTL" --socket ${q(d.socket)} image import - --name piped2 --size ${data.length} --json`)
  t.equal(fromPipe.code, 0, fromPipe.stderr)
  t.equal(JSON.parse(fromPipe.stdout).root, img.root, 'a real pipe too')
  const noSize = await asUser(`cat ${q(src)} | ${q(process.execPath)} "$OSFARMCTL" --socket ${q(d.socket)} image import - --name piped3`)
  t.equal(noSize.code, 64, 'a pipe without --size is a clear usage error')
  t.match(noSize.stderr, /--size/)

  const toStdout = await asUser(`${q(process.execPath)} "$OSFARMCTL" --socket ${q(d.socket)} image export own -o - | sha256sum`)
  t.equal(toStdout.code, 0, toStdout.stderr)
  const want = (await execa('sha256sum', [src])).stdout.split(' ')[0]
  t.equal(toStdout.stdout.split(' ')[0], want, 'stdout carries the same bytes, holes as zeros')

  const qcow = path.join(home, 'out.qcow2')
  t.equal((await ctl(`image export own -o ${q(qcow)} --format qcow2`)).code, 0)
  const back = path.join(dir, 'back.raw')
  await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow, back])
  const raw = await fs.readFile(back)
  // qcow2 sizes are whole sectors: qemu-img pads the last one with zeros.
  t.same(raw.subarray(0, data.length), data, 'a qcow2 export converts back to the same bytes')
  t.ok(raw.length - data.length < 512 && raw.subarray(data.length).every(b => b === 0), 'then the padding of the last sector')
})

t.test('a build from the user\'s own source files', async t => {
  const tarball = path.join(home, 'base.tar')
  await busyboxTarball(tarball)
  const motd = path.join(home, 'motd')
  await fs.writeFile(motd, 'from the user\n')
  await fs.chown(motd, uid, gid)
  const spec = path.join(home, 'own.json')
  await fs.writeFile(spec, JSON.stringify({ name: 'own-build', flavour: 'rootfs', rootfs: 'base.tar', size: '64M', files: [{ path: '/etc/motd', source: 'motd' }] }))
  await fs.chown(spec, uid, gid)
  const r = await ctl(`build ${q(spec)} --wait --json`)
  t.equal(r.code, 0, r.stderr)
  const built = JSON.parse(r.stdout)
  t.equal(built.image.name, 'own-build')
  const disk = path.join(home, 'own-build.raw')
  t.equal((await ctl(`image export own-build -o ${q(disk)}`)).code, 0)
  const motdInImage = await execa('debugfs', ['-R', 'cat /etc/motd', disk], { stripFinalNewline: false })
  t.equal(String(motdInImage.stdout), 'from the user\n', 'the user\'s file is in the image')
  const again = await ctl(`build ${q(spec)} --wait --json`)
  t.equal(JSON.parse(again.stdout).cached, true, 'the same sources again: answered from the cache')
  const sources = await fs.readdir(path.join(d.dataDir, 'sources'))
  t.ok(sources.filter(n => /^[0-9a-f]{64}$/.test(n)).length >= 2, 'uploads kept as BLAKE3-named copies in the data dir')
  t.same(sources.filter(n => n.startsWith('.')), [], 'no partial upload left')
})

t.test('a build script, root in its sandbox, gets no root rights from the web console', async t => {
  const tarball = path.join(dir, 'escape.tar')
  await busyboxRootfs(path.join(dir, 'escape-tree'), tarball)
  const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'image.import', params: { path: secret, name: 'escaped' } })
  const script = `wget -q -O - --header 'Content-Type: application/json' --post-data '${body}' ${new URL('rpc', consoleUrl).href} 2>&1 || true`
  const spec = path.join(dir, 'escape.json')
  await fs.writeFile(spec, JSON.stringify({ name: 'escape', flavour: 'rootfs', rootfs: tarball, size: '64M', scripts: [script] }))
  const r = await d.ctl('build', spec, '--wait', '--logs')
  t.equal(r.exitCode, 0, r.stderr.slice(-500))
  t.match(r.stderr, /403|Forbidden/, 'the console refused the sandboxed root')
  t.notOk((await d.ctlJson('image', 'ls')).some((i: { name: string }) => i.name === 'escaped'), 'nothing was imported')
})
