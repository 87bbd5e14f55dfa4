// osfarmd as a host service: readiness and stop through the systemd notify protocol, the
// socket's group permissions, and (in CI, OSFARM_TEST_INSTALL=1) scripts/install and
// scripts/uninstall for real, with `systemd-analyze verify` of the installed unit.

import t, { type Test } from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { execa } from 'execa'
import { OSFARMCTL, OSFARMD, startDaemon, tempDir } from '../testing/daemon.js'

const REPO = path.resolve(path.dirname(OSFARMD), '../..')
// The environment the unit gives the daemon (systemd/osfarmd.service, Environment=).
const UNIT_ENV = { NODE_ENV: 'production', MALLOC_ARENA_MAX: '2' }
// Runs a command without tap's process tracking: tap hooks spawn and puts its loader in
// NODE_OPTIONS, which must not reach npm, tsc or another user's processes.
const untracked = (cmd: string, args: string[] = []) => execa('env', ['-u', 'NODE_OPTIONS', cmd, ...args], { reject: false, all: true })

// A NOTIFY_SOCKET listener (AF_UNIX datagrams; Node has none, python3 does) that prints each message.
async function notifyListener (socket: string) {
  const py = spawn('python3', ['-u', '-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("LISTENING", flush=True)
s.settimeout(60)
while True:
    print(s.recv(4096).decode().replace("\\n", " "), flush=True)
`, socket], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  py.stdout.on('data', d => { out += d })
  const waitFor = async (text: string, timeoutMs = 20_000) => {
    await eventually(`${text} on the notify socket`, () => out.includes(text), { timeoutMs, intervalMs: 20 }).catch(err => { throw new Error(`${(err as Error).message}; got: ${out}`) })
  }
  await waitFor('LISTENING')
  return { waitFor, messages: () => out, close: () => py.kill() }
}

async function runAsUnitDoes (t: Test, argv: string[]) {
  const dir = await tempDir()
  const listener = await notifyListener(path.join(dir, 'notify'))
  t.teardown(listener.close)
  const cfg = path.join(dir, 'osfarmd.json')
  await fs.writeFile(cfg, `// as /etc/osfarm/osfarmd.json, in a temp dir\n{ "dataDir": "${dir}/data", "socket": "${dir}/osfarmd.sock" }\n`)
  const daemon = spawn(argv[0]!, [...argv.slice(1), 'run', '--config', cfg], {
    env: { PATH: process.env.PATH!, ...UNIT_ENV, NOTIFY_SOCKET: path.join(dir, 'notify') },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let log = ''
  daemon.stdout.on('data', d => { log += d })
  daemon.stderr.on('data', d => { log += d })
  const exited = new Promise<number | null>(resolve => daemon.once('exit', resolve))
  await listener.waitFor('READY=1')
  const status = await execa(process.execPath, [OSFARMCTL, '--socket', `${dir}/osfarmd.sock`, 'status', '--json'], { reject: false })
  t.equal(status.exitCode, 0, 'the socket answers once READY=1 is sent')
  daemon.kill('SIGTERM')
  await listener.waitFor('STOPPING=1')
  t.equal(await exited, 0, 'clean exit after SIGTERM')
  t.ok(listener.messages().indexOf('READY=1') < listener.messages().indexOf('STOPPING=1'), 'READY=1 then STOPPING=1')
  t.match(log, /osfarmd stopped/)
}

t.test('the daemon tells systemd READY=1 when serving and STOPPING=1 on SIGTERM', async t => {
  await runAsUnitDoes(t, [process.execPath, OSFARMD])
})

t.test('the socket answers its group and refuses others', async t => {
  const group = 'osfarm-test'
  const member = 'osfarm-t-member'
  const outsider = 'osfarm-t-outsider'
  await execa('sh', ['-c', `getent group ${group} >/dev/null || groupadd --system ${group}
id ${member} >/dev/null 2>&1 || useradd --system --no-create-home -G ${group} ${member}
id ${outsider} >/dev/null 2>&1 || useradd --system --no-create-home ${outsider}`])
  t.teardown(() => execa('sh', ['-c', `userdel ${member}; userdel ${outsider}; groupdel ${group}`], { reject: false }))
  const dir = await tempDir()
  await fs.chmod(dir, 0o755)
  const d = await startDaemon({ dir, args: ['--config', await writeConfig(dir, { socketGroup: group })] })
  t.teardown(() => d.stop())
  const st = await fs.stat(d.socket)
  t.equal(st.mode & 0o777, 0o660, 'socket mode 0660')
  const as = (user: string) => execa('runuser', ['-u', user, '--', 'env', '-u', 'NODE_OPTIONS', process.execPath, OSFARMCTL, '--socket', d.socket, 'status'], { reject: false })
  const ok = await as(member)
  t.equal(ok.exitCode, 0, `a member of ${group} is served: ${ok.stderr}`)
  const refused = await as(outsider)
  t.equal(refused.exitCode, 69, 'an outsider is refused')
  t.match(refused.stderr, /DAEMON_UNREACHABLE: cannot connect to .* \(EACCES\)/)
})

t.test('writeRequiresRoot: the group socket serves reads only; root has the admin socket', async t => {
  const dir = await tempDir()
  const d = await startDaemon({ dir, args: ['--config', await writeConfig(dir, { writeRequiresRoot: true })] })
  t.teardown(() => d.stop())
  const admin = path.join(dir, 'osfarmd-admin.sock')
  t.equal((await fs.stat(admin)).mode & 0o777, 0o600, 'admin socket mode 0600')
  const src = path.join(dir, 'a.img')
  await fs.writeFile(src, Buffer.alloc(4096, 1))
  // Talk to the group socket directly, as a non-root member would.
  const raw = await rawCall(d.socket, 'image.import', { path: src, name: 'a' })
  t.equal(raw.error?.data?.code, 'PERMISSION_DENIED')
  t.ok((await rawCall(d.socket, 'image.list', {})).result, 'reads are served')
  // osfarmctl run by root picks the admin socket by itself.
  const r = await d.ctl('image', 'import', src, '--name', 'a')
  t.equal(r.exitCode, 0, r.stderr)
})

t.test('osfarmctl config check', async t => {
  const dir = await tempDir()
  const good = await execa(process.execPath, [OSFARMCTL, 'config', 'check', path.join(REPO, 'systemd/osfarmd.json')], { reject: false })
  t.equal(good.exitCode, 0, good.stderr)
  const bad = path.join(dir, 'bad.json')
  await fs.writeFile(bad, '{ "metricsListen": "0.0.0.0:9477" }')
  const r = await execa(process.execPath, [OSFARMCTL, 'config', 'check', bad], { reject: false })
  t.equal(r.exitCode, 78)
  t.match(r.stderr, /BAD_CONFIG: .*metricsListen must be "host:port" on a loopback address/)
})

t.test('stats and the Prometheus endpoint', async t => {
  const dir = await tempDir()
  const port = 20000 + Math.floor(Math.random() * 20000)
  const d = await startDaemon({ dir, args: ['--config', await writeConfig(dir, { metricsListen: `127.0.0.1:${port}` })] })
  t.teardown(() => d.stop())
  const src = path.join(dir, 'a.img')
  await fs.writeFile(src, Buffer.alloc(8192, 1))
  await d.ctlJson('image', 'import', src, '--name', 'a')
  const stats = await d.ctlJson('stats')
  const jobs = stats.find((f: any) => f.name === 'osfarm_jobs_total')
  t.same(jobs.samples, [{ labels: { kind: 'import', state: 'done' }, value: 1 }])
  t.equal(stats.find((f: any) => f.name === 'osfarm_images').samples[0].value, 1)
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  t.match(text, /# TYPE osfarm_jobs_total counter\nosfarm_jobs_total\{kind="import",state="done"\} 1\n/)
  t.match(text, /osfarm_imported_bytes_total 8192\n/)
  t.match(text, /osfarm_store_bytes\{backend="file",kind="used"\} \d+/)
})

t.test('bash completion is generated from the command tree', async t => {
  const r = await execa(process.execPath, [OSFARMCTL, 'completion', 'bash'])
  t.match(r.stdout, /complete -o filenames -F _osfarmctl osfarmctl/)
  t.match(r.stdout, /"image export"\) words="--output -o --format/)
  const syntax = await execa('bash', ['-n'], { input: r.stdout, reject: false })
  t.equal(syntax.exitCode, 0)
})

t.test('scripts/install and scripts/uninstall, as a new user would run them', { skip: process.env.OSFARM_TEST_INSTALL === '1' ? false : 'installs into /opt, /usr/local and /etc: set OSFARM_TEST_INSTALL=1 (CI does)' }, async t => {
  // From a copy of the checkout: install rebuilds dist/, which the other test files load from
  // while they run.
  const checkout = await copyCheckout(t)
  const install = await untracked(path.join(checkout, 'scripts/install'))
  t.teardown(() => untracked(path.join(checkout, 'scripts/uninstall'), ['--purge']))
  t.equal(install.exitCode, 0, install.all)
  t.match(install.all, /osfarmd: \S+ \(pid \d+/, 'the installed daemon answers osfarmctl status')
  const status = await untracked('/usr/local/bin/osfarmctl', ['status', '--json'])
  t.equal(status.exitCode, 0, status.stderr)
  const verify = await execa('systemd-analyze', ['verify', '/etc/systemd/system/osfarmd.service', path.join(REPO, 'systemd/osfarmd.service')], { reject: false, all: true })
  t.equal(verify.exitCode, 0, `systemd-analyze verify: ${verify.all}`)
  t.equal((await fs.stat('/run/osfarm/osfarmd.sock')).gid, Number((await execa('getent', ['group', 'osfarm'])).stdout.split(':')[2]), 'socket owned by group osfarm')
  await runAsUnitDoes(t, ['/usr/local/bin/osfarmd'])
  const un = await untracked(path.join(checkout, 'scripts/uninstall'))
  t.equal(un.exitCode, 0, un.all)
  await t.rejects(fs.stat('/usr/local/bin/osfarmd'), { code: 'ENOENT' })
  t.ok(await fs.stat('/etc/osfarm/osfarmd.json'), 'the config is kept without --purge')
})

// The checkout's files as git sees them (tracked and new, not ignored), and its node_modules.
async function copyCheckout (t: Test): Promise<string> {
  const dir = await tempDir('osfarm-checkout-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const files = await execa('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO })
  await execa('cpio', ['-p0dm', '--quiet', dir], { cwd: REPO, input: files.stdout })
  await execa('cp', ['-a', '--reflink=auto', path.join(REPO, 'node_modules'), dir])
  return dir
}

async function writeConfig (dir: string, settings: Record<string, unknown>): Promise<string> {
  const file = path.join(dir, 'config.json')
  await fs.writeFile(file, JSON.stringify(settings))
  return file
}

async function rawCall (socket: string, method: string, params: unknown): Promise<any> {
  const net = await import('node:net')
  return new Promise((resolve, reject) => {
    const c = net.connect(socket)
    let buf = ''
    c.on('data', d => {
      buf += d
      const nl = buf.indexOf('\n')
      if (nl !== -1) { c.end(); resolve(JSON.parse(buf.slice(0, nl))) }
    })
    c.on('error', reject)
    c.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) + '\n')
  })
}
