// Builds are sandboxed: hostile images (rootfs tarballs whose etc, var, usr, proc, sys, dev and
// apt's cache dirs are absolute links to host directories, scripts that make such links) build
// inside the image or fail with a clear code, and the host directories they point at are left
// exactly as they were (checksums, and no mount on or under them). Steps' processes end with
// them; a step over its time or memory limit fails and leaves nothing. Real busybox images,
// real namespaces, loop devices and mounts; no mirror needed.

import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { Builder, type BuildResult } from '../daemon/builder/builder.js'
import { parseSpec, type ImageSpec } from '../daemon/builder/spec.js'
import { createFileStore } from '../daemon/store/file/file-store.js'
import { readFile as debugfsRead } from '../daemon/builder/tools/mke2fs.js'
import { cgroupPrefix } from '../daemon/builder/sandbox/cgroup.js'
import { specResolver } from '../testing/sources.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-sandbox-'))
const host = path.join(dir, 'host')
const workDir = path.join(dir, 'work')
const store = await createFileStore({ dir: path.join(dir, 'store') })
const builder = new Builder({ store, workDir })
const resolve = await specResolver(dir)
t.teardown(async () => {
  await store.close()
  await fs.rm(dir, { recursive: true, force: true })
})

// The host directories hostile images point at, each with files a careless build would change.
const HOST_FILES: Record<string, string> = {
  'etc/machine-id': 'host-machine-id\n',
  'etc/resolv.conf': 'nameserver 192.0.2.53\n',
  'etc/passwd': 'root:x:0:0:host:/root:/bin/sh\n',
  'ssh/ssh_host_ed25519_key': 'host key\n',
  'ssh/ssh_host_ed25519_key.pub': 'host key pub\n',
  'log/dpkg.log': 'host dpkg log\n',
  'log/apt/history.log': 'host apt history\n',
  'var/lib/dpkg/status-old': 'host status-old\n',
  'var/cache/apt/pkgcache.bin': 'host pkgcache\n',
  'usr/sbin/keep': 'host sbin\n',
  'proc/keep': 'not proc\n',
  'sys/keep': 'not sys\n',
  'dev/keep': 'not dev\n',
  'lists/keep': 'host lists\n',
  'archives/keep': 'host archives\n'
}
for (const [p, content] of Object.entries(HOST_FILES)) {
  await fs.mkdir(path.dirname(path.join(host, p)), { recursive: true })
  await fs.writeFile(path.join(host, p), content)
}

// Every entry under the host dummies: type, mode, size, content hash or link target.
async function hostState (): Promise<string[]> {
  const out: string[] = []
  const visit = async (p: string): Promise<void> => {
    const st = await fs.lstat(p)
    const rel = path.relative(host, p) || '.'
    if (st.isDirectory()) {
      out.push(`${rel} dir ${st.mode.toString(8)}`)
      for (const e of (await fs.readdir(p)).sort()) await visit(path.join(p, e))
    } else if (st.isSymbolicLink()) {
      out.push(`${rel} link ${await fs.readlink(p)}`)
    } else {
      out.push(`${rel} file ${st.mode.toString(8)} ${crypto.createHash('sha256').update(await fs.readFile(p)).digest('hex')}`)
    }
  }
  await visit(host)
  return out
}

// Mounts anywhere in this test's dir, and loop devices on its files (findmnt, losetup).
async function leftovers (): Promise<string[]> {
  const problems: string[] = []
  const mounts = await execa('findmnt', ['-rn', '-o', 'TARGET,SOURCE,FSTYPE'], { reject: false })
  for (const line of String(mounts.stdout).split('\n')) if (line.includes(dir)) problems.push(`mount: ${line}`)
  const loops = await execa('losetup', ['-a'], { reject: false })
  for (const line of String(loops.stdout).split('\n')) if (line.includes(dir)) problems.push(`loop: ${line}`)
  for (const v of await store.list()) if (v.kind === 'active') problems.push(`active volume: ${v.key}`)
  for (const name of await fs.readdir(workDir).catch(() => [] as string[])) if (!['apt', 'layer-use.json'].includes(name)) problems.push(`scratch: ${name}`)
  for (const ctrl of ['memory', 'cpu', 'pids', 'unified', '']) {
    const cgroups = await execa('find', [path.join('/sys/fs/cgroup', ctrl), '-maxdepth', '4', '-type', 'd', '-name', `${cgroupPrefix(workDir)}*`], { reject: false })
    for (const line of String(cgroups.stdout).split('\n').filter(Boolean)) problems.push(`cgroup: ${line}`)
  }
  return problems
}

// Processes whose command line holds a marker (a leftover `sleep` of a script).
async function processesWith (marker: string): Promise<number[]> {
  const found: number[] = []
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const cmd = await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    if (cmd.split('\0').includes(marker)) found.push(Number(name))
  }
  return found
}

const before = await hostState()

// A busybox root, changed by `hostile` before it is packed.
async function rootfs (name: string, hostile: (root: string) => Promise<void> = async () => {}): Promise<string> {
  const root = path.join(dir, 'trees', name)
  const tarball = path.join(dir, 'trees', `${name}.tar`)
  if (await fs.access(tarball).then(() => true, () => false)) return tarball
  return busyboxRootfs(root, tarball, hostile)
}

const spec = async (tarball: string, o: Record<string, unknown>): Promise<ImageSpec> =>
  resolve(parseSpec(JSON.stringify({ name: 'hostile', flavour: 'rootfs', rootfs: tarball, size: '64M', ...o }), 'json'))

const volume = async (key: string) => (await store.stat(key))!.path
const read = async (r: BuildResult, p: string) => (await debugfsRead(await volume(r.key), p))?.toString()

async function untouched (t: Test): Promise<void> {
  t.same(await hostState(), before, 'the host directories are untouched (every checksum the same)')
  t.same(await leftovers(), [], 'no mount, loop device, active volume, scratch dir or cgroup left')
}

t.test('etc, var, usr, proc, sys and dev linked to host directories: the build works inside the image', async t => {
  const tarball = await rootfs('top-links', async root => {
    await fs.rm(path.join(root, 'etc'), { recursive: true })
    for (const d of ['etc', 'var', 'usr', 'proc', 'sys', 'dev']) await fs.symlink(path.join(host, d), path.join(root, d))
  })
  const r = await builder.build(await spec(tarball, {
    files: [{ path: '/etc/motd', content: 'hostile\n' }, { path: '/var/lib/x/file', content: 'x\n' }],
    scripts: [
      'echo from-script > /etc/from-script; cat /proc/self/stat > /dev/null; ls /sys > /dev/null; echo > /dev/null',
      'echo key > /etc/ssh_host_rsa_key; echo log > /var/log-file; mkdir -p /usr/sbin; echo x > /usr/sbin/x'
    ]
  }))
  t.same(r.layers.map(l => l.step), ['base', 'files', 'scripts'])
  // An absolute link resolves inside the image: /etc is <image>/<host>/etc.
  t.equal(await read(r, path.join(host, 'etc/motd')), 'hostile\n', 'the files step wrote inside the image')
  t.equal(await read(r, path.join(host, 'etc/from-script')), 'from-script\n', 'the script wrote inside the image')
  t.equal(await read(r, path.join(host, 'var/lib/x/file')), 'x\n')
  await untouched(t)
})

t.test('apt\'s lists and archives, ssh, log, machine-id, resolv.conf and sbin linked to host paths', async t => {
  // The image's "apt-get" (a shell script) writes where apt would: the cache bound in.
  const tarball = await rootfs('apt-links', async root => {
    for (const d of ['var/lib/apt', 'var/cache/apt', 'usr/bin']) await fs.mkdir(path.join(root, d), { recursive: true })
    await fs.symlink(path.join(host, 'lists'), path.join(root, 'var/lib/apt/lists'))
    await fs.symlink(path.join(host, 'archives'), path.join(root, 'var/cache/apt/archives'))
    await fs.symlink(path.join(host, 'ssh'), path.join(root, 'etc/ssh'))
    await fs.symlink(path.join(host, 'log'), path.join(root, 'var/log'))
    await fs.symlink(path.join(host, 'etc/machine-id'), path.join(root, 'etc/machine-id'))
    await fs.symlink(path.join(host, 'etc/resolv.conf'), path.join(root, 'etc/resolv.conf'))
    await fs.symlink(path.join(host, 'usr/sbin'), path.join(root, 'usr/sbin'))
    await fs.symlink(path.join(host, 'var/lib/dpkg'), path.join(root, 'var/lib/dpkg'))
    await fs.writeFile(path.join(root, 'usr/bin/apt-get'), '#!/bin/sh\necho probe > /var/lib/apt/lists/osfarm-probe\necho probe > /var/cache/apt/archives/osfarm-probe\ncat /usr/sbin/policy-rc.d > /root/policy-seen\necho "Setting up hello"\n', { mode: 0o755 })
  })
  const r = await builder.build(await spec(tarball, { packages: ['hello'] }))
  t.same(r.layers.map(l => l.step), ['base', 'packages'])
  t.equal(await fs.readFile(path.join(workDir, 'apt/lists/osfarm-probe'), 'utf8'), 'probe\n', 'apt\'s lists went to the daemon\'s cache, bound in')
  t.equal(await fs.readFile(path.join(workDir, 'apt/archives/osfarm-probe'), 'utf8'), 'probe\n')
  t.match(await read(r, '/root/policy-seen'), /exit 101/, 'policy-rc.d was in place (inside the image)')
  t.equal(await read(r, path.join(host, 'usr/sbin/policy-rc.d')), undefined, 'and is gone again')
  t.equal(await read(r, path.join(host, 'lists/osfarm-probe')), undefined, 'the image\'s own lists dir holds nothing: the cache was bound over it')
  await untouched(t)
})

t.test('a script makes such links; the scripts after it and the clean-up stay inside the image', async t => {
  const tarball = await rootfs('plain')
  const r = await builder.build(await spec(tarball, {
    files: [{ path: '/etc/motd', content: 'plain\n' }],
    scripts: [
      [
        // The link targets, made inside the image (this script already runs in it).
        `mkdir -p ${host}/ssh ${host}/log ${host}/etc ${host}/var/lib/dpkg ${host}/var/cache/apt`,
        `rm -rf /etc/ssh; ln -s ${host}/ssh /etc/ssh`,
        `mkdir -p /var/lib /var/cache/apt; ln -s ${host}/log /var/log; ln -s ${host}/var/lib/dpkg /var/lib/dpkg`,
        `ln -s ${host}/var/cache/apt/pkgcache.bin /var/cache/apt/pkgcache.bin`,
        `ln -sf ${host}/etc/machine-id /etc/machine-id; rm -f /etc/resolv.conf; ln -s ${host}/etc/resolv.conf /etc/resolv.conf`,
        `ln -s ${host}/etc /etc/host-etc`
      ].join('\n'),
      [
        'echo image-key > /etc/ssh/ssh_host_ed25519_key',
        'echo image-log > /var/log/dpkg.log',
        'echo image-id > /etc/machine-id',
        'echo image > /etc/host-etc/passwd-from-image',
        'cat /etc/resolv.conf > /root/resolv-seen || true'
      ].join('\n')
    ]
  }))
  t.same(r.layers.map(l => l.step), ['base', 'files', 'scripts'])
  t.equal(await read(r, path.join(host, 'log/dpkg.log')), undefined, 'the clean-up removed the image\'s dpkg.log (inside the image)')
  t.equal(await read(r, path.join(host, 'ssh/ssh_host_ed25519_key')), undefined, 'and its host key')
  t.equal(await read(r, path.join(host, 'etc/passwd-from-image')), 'image\n')
  await untouched(t)
})

t.test('where the sandbox cannot work inside the image, the build fails with a clear code', async t => {
  const cases: Array<[string, (root: string) => Promise<void>, Record<string, unknown>, RegExp]> = [
    ['proc is a file', async root => { await fs.writeFile(path.join(root, 'proc'), 'x') }, { scripts: ['true'] }, /cannot make \/proc in the image/],
    ['etc links to itself', async root => { await fs.rm(path.join(root, 'etc'), { recursive: true }); await fs.symlink('/etc', path.join(root, 'etc')) }, { files: [{ path: '/etc/motd', content: 'x' }] }, /too many levels of symbolic links/],
    ['no /bin/sh for a script', async root => { await fs.rm(path.join(root, 'bin/sh')); await fs.symlink(path.join(host, 'bin/sh'), path.join(root, 'bin/sh')) }, { scripts: ['true'] }, /no \/bin\/sh/]
  ]
  for (const [name, hostile, o, message] of cases) {
    await t.test(name, async t => {
      const err = await builder.build(await spec(await rootfs(name.replace(/\W+/g, '-'), hostile), o)).then(() => undefined, (e: { code: string, message: string }) => e)
      t.equal(err?.code, 'BUILD_FAILED', err?.message ?? 'the build succeeded')
      t.match(err?.message, message)
      await untouched(t)
    })
  }
})

t.test('a script that leaves a background child ends at once; the child is killed', async t => {
  const tarball = await rootfs('plain')
  const started = performance.now()
  const r = await builder.build(await spec(tarball, { scripts: ['sleep 987654 &\necho left a child', 'sleep 987654 > /dev/null 2>&1 &\necho second'] }))
  t.comment(`the scripts step took ${r.layers[1]!.seconds} s (the whole build ${((performance.now() - started) / 1000).toFixed(2)} s)`)
  t.same(r.layers.map(l => l.step), ['base', 'scripts'])
  t.same(await processesWith('987654'), [], 'no process of the step is left')
  await untouched(t)
})

t.test('a script shares neither the host\'s SysV IPC, nor its hostname, nor raw sockets on its network', async t => {
  const shm = (await execa('ipcmk', ['-M', '4096'])).stdout.match(/(\d+)\s*$/)![1]!
  t.match(await fs.readFile('/proc/sysvipc/shm', 'utf8'), new RegExp(`^\\s*-?\\d+\\s+${shm}\\s`, 'm'), 'the host lists its segment')
  t.teardown(() => execa('ipcrm', ['-m', shm], { reject: false }))
  const hostname = (await fs.readFile('/proc/sys/kernel/hostname', 'utf8')).trim()
  const tarball = await rootfs('plain')
  const r = await builder.build(await spec(tarball, {
    scripts: ['cat /proc/sysvipc/shm > /root/ipc\nif busybox hostname osfarm-was-here 2>/dev/null; then echo 0; else echo 1; fi > /root/hostname-rc\nif busybox ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; then echo 0; else echo 1; fi > /root/ping-rc']
  }))
  t.notMatch(await read(r, '/root/ipc'), new RegExp(`^\\s*-?\\d+\\s+${shm}\\s`, 'm'), 'the script does not see it')
  t.not((await read(r, '/root/hostname-rc'))?.trim(), '0', 'hostname cannot be set')
  t.equal((await fs.readFile('/proc/sys/kernel/hostname', 'utf8')).trim(), hostname, 'the host\'s hostname is unchanged')
  t.not((await read(r, '/root/ping-rc'))?.trim(), '0', 'no raw socket (ping fails)')
  await untouched(t)
})

t.test('a script over its time limit fails with a clear code and leaves nothing', async t => {
  const limited = new Builder({ store, workDir, limits: { timeoutMs: 2000 } })
  const tarball = await rootfs('plain')
  const err = await limited.build(await spec(tarball, { scripts: ['echo waiting\nsleep 876543\n'] })).then(() => undefined, (e: { code: string, message: string, details?: Record<string, unknown> }) => e)
  t.equal(err?.code, 'BUILD_FAILED', err?.message ?? 'the build succeeded')
  t.match(err?.message, /scripts step went over its time limit of 2 s/)
  t.equal(err?.details?.limit, 'time')
  t.same(await processesWith('876543'), [], 'the script is killed')
  await untouched(t)
})

const support = await builder.cgroups()
t.comment(`cgroups here: ${support.kind}${support.reason ? ` (${support.reason})` : ''}`)

t.test('memory: a step over its limit is killed and the build says so', { skip: support.kind === 'none' ? `no cgroup to limit memory with: ${support.reason}` : false }, async t => {
  const limited = new Builder({ store, workDir, limits: { memoryBytes: 160 << 20, cpus: 0.5 } })
  const tarball = await rootfs('plain')
  // The step is in its own group, under the limit: busybox reads the group from /proc.
  const ok = await limited.build(await spec(tarball, { scripts: ['cat /proc/self/cgroup > /root/cgroup'] }))
  t.match(await read(ok, '/root/cgroup'), new RegExp(cgroupPrefix(workDir)), 'the step ran in its own cgroup')
  const err = await limited.build(await spec(tarball, { scripts: ['dd if=/dev/zero of=/dev/null bs=400M count=1'] })).then(() => undefined, (e: { code: string, message: string, details?: Record<string, unknown> }) => e)
  t.equal(err?.code, 'BUILD_FAILED', err?.message ?? 'the build succeeded')
  t.match(err?.message, /went over its memory limit/)
  t.equal(err?.details?.limit, 'memory')
  await untouched(t)
})
