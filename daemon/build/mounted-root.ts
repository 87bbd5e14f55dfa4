// A layer's filesystem mounted for a step, and a chroot prepared inside it. Whatever happens in
// the step, everything mounted here is unmounted and the loop device detached in `finally`.
//
// Mount options serve determinism: noatime (reads leave no trace), nodelalloc (blocks are
// allocated in write order, not at writeback time), noinit_itable (no background zeroing).

import fs from 'node:fs/promises'
import path from 'node:path'
import { attach, detach, mount, umount, mountsUnder, killRootedIn } from './tools/mount.js'

export const MOUNT_OPTIONS = ['noatime', 'nodelalloc', 'noinit_itable']

export interface ChrootSetup {
  // Host directories bound over /var/lib/apt/lists and /var/cache/apt/archives (apt's cache).
  aptCache?: { lists: string, archives: string }
  // Copy the host's resolv.conf in for the step (apt and scripts may need the network).
  network?: boolean
}

export async function withMountedVolume<T> (volumePath: string, workDir: string, work: (root: string) => Promise<T>, options: { readOnly?: boolean } = {}): Promise<T> {
  await fs.mkdir(workDir, { recursive: true })
  const root = await fs.mkdtemp(path.join(workDir, 'mnt-'))
  let device: { device: string, loop: boolean } | undefined
  let mounted = false
  return settle(async () => {
    device = await attach(volumePath)
    await mount(device.device, root, { type: 'ext4', options: options.readOnly ? ['ro', ...MOUNT_OPTIONS] : MOUNT_OPTIONS })
    mounted = true
    if (!options.readOnly) await streamAllocation(device.device)
    return work(root)
  }, async attempt => {
    if (mounted) {
      await attempt(() => killRootedIn(root))
      for (const point of await mountsUnder(root)) await attempt(() => umount(point))
    }
    if (device?.loop) await attempt(() => detach(device!.device))
    await attempt(() => fs.rmdir(root))
  })
}

// ext4 places small files in per-CPU preallocation groups, so where a file lands depends on
// which CPU wrote it. Treating every file as a stream (placed by its inode's goal) makes the
// layout follow the order of writes only, the same on every build.
async function streamAllocation (device: string): Promise<void> {
  const name = path.basename(await fs.realpath(device))
  await fs.writeFile(`/sys/fs/ext4/${name}/mb_stream_req`, '0').catch(() => {})
}

// The kernel filesystems, a policy-rc.d that keeps services from starting, and DNS.
export async function withChroot<T> (root: string, setup: ChrootSetup, work: () => Promise<T>): Promise<T> {
  const mounted: string[] = []
  const undo: Array<() => Promise<void>> = []
  const bind = async (target: string, fn: () => Promise<void>) => {
    await fs.mkdir(target, { recursive: true })
    await fn()
    mounted.push(target)
  }
  return settle(async () => {
    await bind(path.join(root, 'proc'), () => mount('proc', path.join(root, 'proc'), { type: 'proc' }))
    await bind(path.join(root, 'sys'), () => mount('sysfs', path.join(root, 'sys'), { type: 'sysfs', options: ['ro', 'nosuid', 'nodev', 'noexec'] }))
    await bind(path.join(root, 'dev'), () => mount('/dev', path.join(root, 'dev'), { bind: true }))
    if (setup.aptCache) {
      await bind(path.join(root, 'var/lib/apt/lists'), () => mount(setup.aptCache!.lists, path.join(root, 'var/lib/apt/lists'), { bind: true }))
      await bind(path.join(root, 'var/cache/apt/archives'), () => mount(setup.aptCache!.archives, path.join(root, 'var/cache/apt/archives'), { bind: true }))
    }
    undo.push(await placeFile(path.join(root, 'usr/sbin/policy-rc.d'), '#!/bin/sh\n# osfarm: no service starts while an image is built\nexit 101\n', 0o755))
    if (setup.network) {
      const resolv = await fs.readFile('/etc/resolv.conf').catch(() => Buffer.alloc(0))
      undo.push(await placeFile(path.join(root, 'etc/resolv.conf'), resolv, 0o644))
    }
    return work()
  }, async attempt => {
    await attempt(() => killRootedIn(root))
    for (const u of undo.reverse()) await attempt(u)
    for (const point of mounted.reverse()) await attempt(() => umount(point))
  })
}

// Runs work, then cleanup whatever happened. Every cleanup action is attempted; the work's
// error wins over a cleanup error, which is thrown only when the work succeeded.
type Attempt = (fn: () => Promise<unknown>) => Promise<void>

async function settle<T> (work: () => Promise<T>, cleanup: (attempt: Attempt) => Promise<void>): Promise<T> {
  const errors: unknown[] = []
  const attempt: Attempt = async fn => { try { await fn() } catch (err) { errors.push(err) } }
  let result: T
  try {
    result = await work()
  } catch (err) {
    await cleanup(attempt).catch(() => {})
    throw err
  }
  await cleanup(attempt)
  if (errors.length) throw errors[0]
  return result
}

// Puts a file in place for the step, setting aside whatever was there (file or symlink), and
// returns how to put the original back.
async function placeFile (file: string, content: string | Buffer, mode: number): Promise<() => Promise<void>> {
  const saved = file + '.osfarm-saved'
  const had = await fs.lstat(file).then(() => true, () => false)
  await fs.mkdir(path.dirname(file), { recursive: true })
  if (had) await fs.rename(file, saved)
  await fs.writeFile(file, content, { mode })
  await fs.chmod(file, mode)
  return async () => {
    await fs.rm(file, { force: true })
    if (had) await fs.rename(saved, file)
  }
}

// The bytes a tree's files and directories take in 4 KiB blocks (what its filesystem needs);
// mtimes later than the epoch are set back to it on the way.
export async function treeBytes (root: string, epoch: number): Promise<number> {
  let bytes = 0
  const visit = async (p: string, isDir: boolean): Promise<void> => {
    const st = await fs.lstat(p)
    if (st.mtimeMs > epoch * 1000) await fs.lutimes(p, st.atime, epoch)
    bytes += Math.ceil(st.size / 4096) * 4096
    if (!isDir) return
    const entries = await fs.readdir(p, { withFileTypes: true })
    await Promise.all(entries.map(e => visit(path.join(p, e.name), e.isDirectory())))
  }
  await visit(root, true)
  return bytes
}

export interface StrayTimes {
  ino: number
  // The mtime is later than the epoch (else it is kept: a packaged file's own time).
  late: boolean
}

// The inodes of a mounted tree whose times are not the build's: atime, ctime and crtime must be
// the epoch, mtime at most the epoch. The kernel's clock cannot be set per mount, so these are
// put right afterwards on the unmounted filesystem (normalizeTimes in tools/mke2fs.ts).
export async function strayTimes (root: string, epoch: number): Promise<StrayTimes[]> {
  const limit = epoch * 1000
  const out: StrayTimes[] = []
  const visit = async (p: string, isDir: boolean): Promise<void> => {
    const st = await fs.lstat(p)
    const late = st.mtimeMs > limit
    if (late || st.atimeMs !== limit || st.ctimeMs !== limit || st.birthtimeMs !== limit) out.push({ ino: st.ino, late })
    if (!isDir) return
    const entries = await fs.readdir(p, { withFileTypes: true })
    await Promise.all(entries.map(e => visit(path.join(p, e.name), e.isDirectory())))
  }
  await visit(root, true)
  return out.sort((a, b) => a.ino - b.ino)
}
