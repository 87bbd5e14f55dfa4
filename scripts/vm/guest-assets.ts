// The guest's kernel and initramfs, made once and cached outside the repo. The kernel is
// Debian's (the version linux-image-amd64 depends on, fetched with `apt-get download`); we boot
// the uncompressed ELF inside its vmlinuz (it has a PVH entry), which saves seconds of
// decompression under TCG. The initramfs is busybox-static plus the modules the guest needs:
// the package has no modules.dep and nothing loads on demand, so init insmods them in order.

import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { createHash } from 'node:crypto'
import { execa } from 'execa'
import { TOOL_FAILED, TOOL_MISSING } from '../../protocol/errors.js'
import { writeCpio, type CpioEntry } from './cpio.js'

const META_PACKAGE = 'linux-image-amd64'
const BUSYBOX = '/bin/busybox'
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46])
const APT_TIMEOUT_MS = 300_000
const EXTRACT_TIMEOUT_MS = 120_000

// In load order: each module's dependencies come before it.
export const GUEST_MODULES = [
  'virtio_ring', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio', 'virtio_pci', 'virtio_mmio',
  'virtio_blk', '9pnet', '9pnet_virtio', 'netfs', 'fscache', '9p', 'overlay', 'jbd2', 'mbcache', 'crc16',
  'crc32c_generic', 'ext4', 'dm-mod', 'dm-bio-prison', 'dm-bufio', 'libcrc32c', 'dm-persistent-data',
  'dm-thin-pool', 'dm-snapshot'
] as const

// Where the guest finds its job and writes its results (a writable 9p share).
export const GUEST_OUT_DIR = '/run/osfarm-vm'
export const HOST_TAG = 'host'
export const OUT_TAG = 'out'

export interface GuestAssets {
  kernelVersion: string
  vmlinux: string
  initrd: string
}

export function cacheDir (): string {
  return process.env.OSFARM_VM_CACHE ?? path.join(os.homedir(), '.cache', 'osfarm-vm')
}

// The busybox init. It mounts the host root read-only over 9p with a tmpfs overlay on top,
// chroots into it and runs the job the host left on the `out` share; exit status and output go
// back the same way. On any early failure it powers off, and the host sees no exit file.
function initScript (): string {
  const mods = GUEST_MODULES.join(' ')
  return `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in ${mods}; do
  $B insmod /lib/modules/$m.ko || echo "osfarm-vm: insmod $m failed" > /dev/console
done
fail () { echo "osfarm-vm: $*" > /dev/console; $B poweroff -f; exit 1; }
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose ${HOST_TAG} /lower || fail "cannot mount the host root"
$B mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay"
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sys /newroot/sys
$B mount -t devtmpfs dev /newroot/dev
$B mount -t tmpfs -o mode=0755 tmpfs /newroot/run
$B mkdir -p /newroot${GUEST_OUT_DIR}
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ${OUT_TAG} /newroot${GUEST_OUT_DIR} || fail "cannot mount the out share"
$B chroot /newroot /bin/sh ${GUEST_OUT_DIR}/job.sh > /newroot${GUEST_OUT_DIR}/stdout 2> /newroot${GUEST_OUT_DIR}/stderr < /dev/null
echo $? > /newroot${GUEST_OUT_DIR}/exit.tmp
$B mv /newroot${GUEST_OUT_DIR}/exit.tmp /newroot${GUEST_OUT_DIR}/exit
$B sync
$B poweroff -f
`
}

// Returns the cached kernel and initramfs, making them first if needed. `refresh` resolves the
// kernel version from apt again even when one is cached.
export async function ensureGuestAssets (options: { refresh?: boolean } = {}): Promise<GuestAssets> {
  const root = cacheDir()
  await fs.mkdir(root, { recursive: true })
  let version = process.env.OSFARM_VM_KERNEL
  if (!version && !options.refresh) version = await newestCached(root)
  if (!version) version = await resolveKernelPackage()
  const dir = path.join(root, version)
  const vmlinux = path.join(dir, 'vmlinux')
  if (!await exists(vmlinux)) await fetchKernel(version, dir)
  const init = initScript()
  const busybox = await fs.readFile(BUSYBOX).catch(() => { throw TOOL_MISSING(`${BUSYBOX} not found: install busybox-static`) })
  const stamp = createHash('sha256').update(init).update(busybox).digest('hex').slice(0, 16)
  const initrd = path.join(dir, `initramfs-${stamp}.cpio`)
  if (!await exists(initrd)) await buildInitramfs(dir, init, busybox, initrd)
  return { kernelVersion: version, vmlinux, initrd }
}

async function newestCached (root: string): Promise<string | undefined> {
  const names = (await fs.readdir(root)).filter(n => n.startsWith('linux-image-'))
  const ready: string[] = []
  for (const n of names) if (await exists(path.join(root, n, 'vmlinux'))) ready.push(n)
  return ready.sort((a, b) => a.localeCompare(b, 'en', { numeric: true })).pop()
}

// linux-image-amd64 is a meta package: its first Depends names the real kernel package.
async function resolveKernelPackage (): Promise<string> {
  const r = await run('apt-cache', ['depends', '--no-recommends', '--no-suggests', META_PACKAGE])
  const m = /Depends:\s+(linux-image-[0-9][^\s<>]*)/.exec(r)
  if (!m) throw TOOL_FAILED(`cannot resolve the kernel package from ${META_PACKAGE}: ${r.trim()}`)
  return m[1]!
}

async function fetchKernel (pkg: string, dir: string): Promise<void> {
  const work = await fs.mkdtemp(path.join(cacheDir(), '.fetch-'))
  try {
    await run('apt-get', ['download', pkg], { cwd: work, timeout: APT_TIMEOUT_MS })
    const deb = (await fs.readdir(work)).find(n => n.endsWith('.deb'))
    if (!deb) throw TOOL_FAILED(`apt-get download ${pkg} left no .deb`)
    const tree = path.join(work, 'tree')
    await fs.mkdir(tree)
    const patterns = ['boot/vmlinuz-*', ...GUEST_MODULES.map(m => `${m}.ko`)]
    await extractDeb(path.join(work, deb), tree, patterns)
    const staging = path.join(work, 'out')
    await fs.mkdir(path.join(staging, 'modules'), { recursive: true })
    const files = await walk(tree)
    const vmlinuz = files.find(f => /\/boot\/vmlinuz-/.test(f))
    if (!vmlinuz) throw TOOL_FAILED(`${pkg} has no /boot/vmlinuz`)
    await extractVmlinux(vmlinuz, path.join(staging, 'vmlinux'))
    for (const m of GUEST_MODULES) {
      const f = files.find(f => path.basename(f) === `${m}.ko`)
      if (!f) throw TOOL_FAILED(`${pkg} has no module ${m}.ko`)
      await fs.copyFile(f, path.join(staging, 'modules', `${m}.ko`))
    }
    // Publish whole or not at all: a concurrent run may have won the race, which is fine.
    await fs.rename(staging, dir).catch(err => { if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err })
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

async function extractDeb (deb: string, into: string, patterns: string[]): Promise<void> {
  const r = await execa('sh', ['-c', 'deb="$1"; dir="$2"; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards --no-anchored "$@"', 'sh', deb, into, ...patterns],
    { reject: false, timeout: EXTRACT_TIMEOUT_MS })
  if (r.exitCode !== 0) throw TOOL_FAILED(`extracting ${path.basename(deb)} failed: ${String(r.stderr).trim()}`)
}

// vmlinuz is a bzImage whose payload is an XZ stream holding the ELF kernel.
async function extractVmlinux (vmlinuz: string, out: string): Promise<void> {
  const image = await fs.readFile(vmlinuz)
  const at = image.indexOf(XZ_MAGIC)
  if (at < 0) throw TOOL_FAILED(`no XZ stream in ${vmlinuz}`)
  const r = await execa('xz', ['-dc', '--single-stream'], { input: image.subarray(at), encoding: 'buffer', reject: false, timeout: EXTRACT_TIMEOUT_MS })
  const elf = r.stdout as Uint8Array
  if (!elf || elf.length < 4 || !Buffer.from(elf.subarray(0, 4)).equals(ELF_MAGIC)) {
    throw TOOL_FAILED(`xz did not yield an ELF kernel from ${vmlinuz}: ${Buffer.from(r.stderr as Uint8Array).toString().trim()}`)
  }
  await fs.writeFile(out, elf)
}

async function buildInitramfs (dir: string, init: string, busybox: Buffer, out: string): Promise<void> {
  const entries: CpioEntry[] = [
    { type: 'dir', name: 'bin' }, { type: 'dir', name: 'dev' }, { type: 'dir', name: 'proc' },
    { type: 'dir', name: 'sys' }, { type: 'dir', name: 'lower' }, { type: 'dir', name: 'rw' },
    { type: 'dir', name: 'newroot' }, { type: 'dir', name: 'lib' }, { type: 'dir', name: 'lib/modules' },
    { type: 'char', name: 'dev/console', major: 5, minor: 1 },
    { type: 'file', name: 'bin/busybox', data: busybox, mode: 0o755 },
    { type: 'file', name: 'init', data: Buffer.from(init), mode: 0o755 }
  ]
  for (const m of GUEST_MODULES) {
    entries.push({ type: 'file', name: `lib/modules/${m}.ko`, data: await fs.readFile(path.join(dir, 'modules', `${m}.ko`)) })
  }
  const tmp = `${out}.${process.pid}.tmp`
  await fs.writeFile(tmp, writeCpio(entries))
  await fs.rename(tmp, out)
}

async function run (cmd: string, args: string[], options: { cwd?: string, timeout?: number } = {}): Promise<string> {
  const r = await execa(cmd, args, { reject: false, timeout: options.timeout ?? 60_000, cwd: options.cwd })
  if ((r as { code?: string }).code === 'ENOENT') throw TOOL_MISSING(`${cmd} not found`)
  if (r.exitCode !== 0) throw TOOL_FAILED(`${cmd} ${args.join(' ')} failed: ${String(r.stderr).trim()}`)
  return String(r.stdout)
}

async function walk (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) out.push(...await walk(p))
    else out.push(p)
  }
  return out
}

async function exists (p: string): Promise<boolean> {
  return fs.access(p).then(() => true, () => false)
}
