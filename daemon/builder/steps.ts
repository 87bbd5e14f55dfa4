// What each kind of layer does to its mounted root: install packages, place files, run scripts,
// make it bootable. These run inside the step's sandbox (sandbox/sandbox-init.ts), never in the
// daemon: commands through inRoot (pivoted into the image, in their own namespaces), file work
// through the in-root resolver, so the image's own symlinks never lead onto the host.

import { BUILD_FAILED, SCRIPT_FAILED, SIZE_TOO_SMALL } from '../../protocol/errors.js'
import { withStepFiles } from './mounted-root.js'
import { inRoot, SETUP_FAILED_EXIT } from './sandbox/enter-root.js'
import { copyInRoot, lstatInRoot, readdirInRoot, readInRoot, removeInRoot, resolveInRoot, writeInRoot } from './sandbox/in-root.js'
import { APT_ENV, aptFailure, installArgs, updateArgs } from './tools/apt.js'
import { lastLines, BASE_ENV, type RunResult } from '../tools/run.js'
import { BOOT_APPEND } from './plan.js'
import type { ImageSpec, RepositorySpec } from './spec.js'

export { resolveInRoot, writeInRoot }

export interface StepContext {
  root: string
  epoch: number
  log: (line: string) => void
  progress: (phase: string, done: number, total: number) => void
  // apt's lists and archives on the host, shared by builds (bound in for package steps).
  aptCache?: { lists: string, archives: string }
}

// Where a bootable image says how to boot it; read back (with debugfs) by the exporter.
export const BOOT_INFO_PATH = '/etc/osfarm/boot.json'

export interface BootInfo {
  kernel: string
  initrd: string
  append: string
}

function chrootEnv (epoch: number): Record<string, string> {
  return { ...BASE_ENV, ...APT_ENV, SOURCE_DATE_EPOCH: String(epoch), TERM: 'dumb' }
}

// Files a package run leaves behind that differ from build to build, or must not be shared by
// every machine made from the image (host keys, machine id).
const VOLATILE = [
  'var/log/dpkg.log', 'var/log/alternatives.log', 'var/log/apt/history.log', 'var/log/apt/term.log', 'var/log/apt/eipp.log.xz',
  'var/cache/ldconfig/aux-cache', 'var/lib/dpkg/status-old', 'var/lib/dpkg/diversions-old', 'var/lib/dpkg/statoverride-old',
  'var/cache/debconf/config.dat-old', 'var/cache/debconf/templates.dat-old', 'var/lib/dbus/machine-id',
  // apt's binary caches: tens of MiB, rebuilt by apt when missing, never the same bytes twice.
  'var/cache/apt/pkgcache.bin', 'var/cache/apt/srcpkgcache.bin'
]

export async function packagesStep (spec: ImageSpec, packages: string[], initramfs: string[] | undefined, ctx: StepContext): Promise<void> {
  const tool = await packageTool(ctx.root)
  if (tool !== 'apt') throw BUILD_FAILED(`the image has ${tool === 'none' ? 'no package manager osfarm knows' : tool}; only apt is supported for package steps yet`)
  await writeRepositories(ctx.root, spec.repositories)
  if (initramfs) await configureInitramfs(ctx.root, initramfs)
  const binds = ctx.aptCache ? [{ source: ctx.aptCache.lists, target: '/var/lib/apt/lists' }, { source: ctx.aptCache.archives, target: '/var/cache/apt/archives' }] : []
  await withStepFiles(ctx.root, { network: true }, async () => {
    const env = chrootEnv(ctx.epoch)
    const apt = (args: string[], onLine = ctx.log) => inRoot(ctx.root, ['apt-get', ...args], { env, binds, onLine }).then(r => setupCheck(r, 'apt-get'))
    ctx.progress('apt update', 0, 1)
    const upd = await apt(updateArgs())
    if (upd.exitCode !== 0) throw aptFailure(upd.tail, 'apt-get update')
    let total = packages.length
    let done = 0
    const onLine = (line: string) => {
      ctx.log(line)
      const m = /(\d+) newly installed/.exec(line)
      if (m) total = Number(m[1])
      if (line.startsWith('Setting up ')) ctx.progress('apt install', ++done, total)
    }
    // Everything is fetched first: an install from a warm cache then runs exactly as one that
    // had to download (downloads interleaved with unpacking change where files land).
    ctx.progress('apt download', 0, 1)
    const dl = await apt(installArgs(packages, true))
    if (dl.exitCode !== 0) throw aptFailure(dl.tail, 'apt-get install --download-only')
    const inst = await apt(installArgs(packages), onLine)
    if (inst.exitCode !== 0) throw aptFailure(inst.tail, 'apt-get install')
  })
  await removeVolatile(ctx.root)
}

// The sandbox could not be set up for a command (a path it must mount on is not a directory
// in the image, say): the build fails with the sandbox's own words.
function setupCheck (r: RunResult, what: string): RunResult {
  if (r.exitCode === SETUP_FAILED_EXIT) {
    const why = r.tail.filter(l => l.startsWith('osfarm-sandbox: ')).map(l => l.slice('osfarm-sandbox: '.length))
    if (why.length) throw BUILD_FAILED(`cannot run ${what} in the image: ${why.join('; ')}`, { sandbox: why.at(-1) })
  }
  return r
}

// Before the kernel is installed: initramfs-tools then builds a small initrd with just these
// modules (and what they depend on) instead of most of the kernel's drivers.
async function configureInitramfs (root: string, modules: string[]): Promise<void> {
  const o = { mode: 0o644, uid: 0, gid: 0, epoch: 0 }
  await writeInRoot(root, '/etc/initramfs-tools/conf.d/osfarm.conf', Buffer.from('# osfarm: a small initramfs for a virtio disk\nMODULES=list\n'), o)
  // Read by mkinitramfs (like /etc/initramfs-tools/modules, which is a conffile of the
  // package not yet installed): the modules are copied in and loaded at boot.
  await writeInRoot(root, '/usr/share/initramfs-tools/modules.d/osfarm', Buffer.from(modules.join('\n') + '\n'), o)
}

async function writeRepositories (root: string, repos: RepositorySpec[]): Promise<void> {
  if (!repos.length) return
  let text = ''
  for (const [i, r] of repos.entries()) {
    text += `Types: deb\nURIs: ${r.uri}\nSuites: ${r.suites.join(' ')}\nComponents: ${r.components.join(' ')}\n`
    if (r.key) {
      const keyFile = `/etc/apt/keyrings/osfarm-${i}.asc`
      await writeInRoot(root, keyFile, Buffer.from(r.key), { mode: 0o644, uid: 0, gid: 0, epoch: 0 })
      text += `Signed-By: ${keyFile}\n`
    }
    text += '\n'
  }
  await writeInRoot(root, '/etc/apt/sources.list.d/osfarm.sources', Buffer.from(text), { mode: 0o644, uid: 0, gid: 0, epoch: 0 })
}

async function packageTool (root: string): Promise<'apt' | 'dnf' | 'apk' | 'none'> {
  const has = (p: string) => lstatInRoot(root, p).then(st => st?.isFile() === true)
  if (await has('usr/bin/apt-get')) return 'apt'
  if (await has('usr/bin/dnf') || await has('usr/bin/microdnf') || await has('usr/bin/yum')) return 'dnf'
  if (await has('sbin/apk')) return 'apk'
  return 'none'
}

async function removeVolatile (root: string): Promise<void> {
  for (const p of VOLATILE) await removeInRoot(root, '/' + p)
  for (const name of await readdirInRoot(root, '/etc/ssh')) {
    if (/^ssh_host_.*_key(\.pub)?$/.test(name)) await removeInRoot(root, `/etc/ssh/${name}`)
  }
  // systemd's postinst writes a random machine id; an image's machines must each make their own.
  const st = await lstatInRoot(root, '/etc/machine-id', false)
  if (st?.isFile()) await writeInRoot(root, '/etc/machine-id', 'uninitialized\n', { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, epoch: 0 })
}

// sources: image path → a daemon-owned host file holding its content (trusted, regular).
export async function filesStep (spec: ImageSpec, sources: Map<string, string>, ctx: StepContext): Promise<void> {
  const ids = await accounts(ctx.root)
  const files = [...spec.files].sort((a, b) => (a.path < b.path ? -1 : 1))
  for (const [i, f] of files.entries()) {
    ctx.progress('files', i, files.length)
    const uid = ids.user(f.owner)
    const gid = ids.group(f.group)
    if (uid === undefined) throw BUILD_FAILED(`${f.path}: no user ${f.owner} in the image`)
    if (gid === undefined) throw BUILD_FAILED(`${f.path}: no group ${f.group} in the image`)
    const source = sources.get(f.path)
    if (!source) throw BUILD_FAILED(`${f.path}: no content for it`)
    ctx.log(`file ${f.path} ${f.mode.toString(8).padStart(4, '0')} ${f.owner}:${f.group}${f.blob ? ` (${f.blob.size} bytes)` : ''}`)
    await copyInRoot(ctx.root, f.path, source, { mode: f.mode, uid, gid, epoch: ctx.epoch })
  }
  ctx.progress('files', files.length, files.length)
}

export async function scriptsStep (spec: ImageSpec, ctx: StepContext): Promise<void> {
  if (!(await lstatInRoot(ctx.root, '/bin/sh'))?.isFile()) throw BUILD_FAILED('the image has no /bin/sh to run scripts with')
  await withStepFiles(ctx.root, { network: true }, async () => {
    for (const [i, s] of spec.scripts.entries()) {
      ctx.progress('scripts', i, spec.scripts.length)
      ctx.log(`script ${s.name}`)
      const r = setupCheck(await inRoot(ctx.root, ['/bin/sh', '-e', '-s'], { env: { ...chrootEnv(ctx.epoch), OSFARM_SCRIPT: s.name }, input: s.content, onLine: ctx.log }), `script ${s.name}`)
      if (r.exitCode !== 0) {
        if (r.tail.some(l => /No space left on device/.test(l))) throw SIZE_TOO_SMALL(`script ${s.name} ran out of space: ${lastLines(r.tail, 2)}`)
        throw SCRIPT_FAILED(`script ${s.name} exited with ${r.exitCode}: ${lastLines(r.tail, 3)}`, { script: s.name, exitCode: r.exitCode })
      }
    }
    ctx.progress('scripts', spec.scripts.length, spec.scripts.length)
  })
  await removeVolatile(ctx.root)
}

// Direct kernel boot: the image is the root filesystem on the whole disk; its kernel and
// initrd are named in BOOT_INFO_PATH and copied out at export (see boot-export.ts).
export async function bootStep (ctx: StepContext): Promise<BootInfo> {
  const names = await readdirInRoot(ctx.root, '/boot')
  const versions = names.filter(n => n.startsWith('vmlinuz-')).map(n => n.slice('vmlinuz-'.length)).sort(compareVersions)
  const version = versions.filter(v => names.includes(`initrd.img-${v}`)).at(-1)
  if (!version) throw BUILD_FAILED('a bootable image needs a kernel and an initrd in /boot; none was installed')
  const init = (await lstatInRoot(ctx.root, '/sbin/init', false)) !== undefined
  if (!init) throw BUILD_FAILED('a bootable image needs an init system (/sbin/init); none was installed')
  const info: BootInfo = { kernel: `/boot/vmlinuz-${version}`, initrd: `/boot/initrd.img-${version}`, append: BOOT_APPEND }
  const opts = { mode: 0o644, uid: 0, gid: 0, epoch: ctx.epoch }
  await writeInRoot(ctx.root, '/etc/fstab', Buffer.from('# osfarm: the root filesystem is the whole disk\n/dev/vda / ext4 defaults,noatime,errors=remount-ro 0 1\n'), opts)
  await writeInRoot(ctx.root, '/etc/hostname', Buffer.from('osfarm\n'), opts)
  await writeInRoot(ctx.root, '/etc/hosts', Buffer.from('127.0.0.1 localhost\n127.0.1.1 osfarm\n::1 localhost ip6-localhost ip6-loopback\n'), opts)
  await writeInRoot(ctx.root, BOOT_INFO_PATH, Buffer.from(JSON.stringify(info, null, 2) + '\n'), opts)
  ctx.log(`boot: ${info.kernel} ${info.initrd} ${info.append}`)
  return info
}

function compareVersions (a: string, b: string): number {
  const pa = a.split(/[.-]/)
  const pb = b.split(/[.-]/)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? ''
    const y = pb[i] ?? ''
    const nx = Number(x)
    const ny = Number(y)
    const c = Number.isNaN(nx) || Number.isNaN(ny) ? x.localeCompare(y) : nx - ny
    if (c !== 0) return c
  }
  return 0
}

// Users and groups by name from the image's own /etc/passwd and /etc/group; numbers as given.
async function accounts (root: string): Promise<{ user: (n: string) => number | undefined, group: (n: string) => number | undefined }> {
  const table = async (file: string) => {
    const text = await readInRoot(root, file) ?? ''
    const map = new Map<string, number>()
    for (const line of text.split('\n')) {
      const [name, , id] = line.split(':')
      if (name && id && /^\d+$/.test(id)) map.set(name, Number(id))
    }
    return map
  }
  const users = await table('/etc/passwd')
  const groups = await table('/etc/group')
  const lookup = (map: Map<string, number>) => (n: string) => /^\d+$/.test(n) ? Number(n) : n === 'root' ? 0 : map.get(n)
  return { user: lookup(users), group: lookup(groups) }
}
