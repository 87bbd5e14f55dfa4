// A layer's filesystem mounted for a step, and the files a step puts in place for its
// commands. Runs inside the step's sandbox (sandbox/sandbox-init.ts): the mount is made in the
// sandbox's own mount namespace, so it vanishes with it (kill -9 included), and the loop
// device `mount -o loop` attaches clears itself once that mount is gone.
//
// Mount options serve determinism: noatime (reads leave no trace), nodelalloc (blocks are
// allocated in write order, not at writeback time), noinit_itable (no background zeroing).
// nodev: a device node in the image is inert to the sandbox's own file work.

import fs from 'node:fs/promises'
import { constants as FS } from 'node:fs'
import path from 'node:path'
import { mount, umount } from './tools/mount.js'
import { resolveInRoot } from './sandbox/in-root.js'
import { IO_ERROR } from '../../protocol/errors.js'
import { lastLines, run } from '../tools/run.js'

export const MOUNT_OPTIONS = ['noatime', 'nodelalloc', 'noinit_itable']

export interface StepFiles {
  // Copy the host's resolv.conf in for the step (apt and scripts may need the network).
  network?: boolean
}

// root: an empty directory the caller made (and removes: it outlives a killed sandbox).
export async function withMountedVolume<T> (volumePath: string, root: string, work: (root: string) => Promise<T>, options: { readOnly?: boolean } = {}): Promise<T> {
  let mounted = false
  return settle(async () => {
    const block = (await fs.stat(volumePath)).isBlockDevice()
    const opts = [...(options.readOnly ? ['ro'] : []), 'nodev', ...MOUNT_OPTIONS, ...(block ? [] : ['loop'])]
    await mount(volumePath, root, { type: 'ext4', options: opts })
    mounted = true
    if (!options.readOnly) await streamAllocation(await mountSource(root))
    const result = await work(root)
    // Writes the kernel could not put down (a full host under a loop device) surface only here:
    // an unmount would drop them silently and commit a broken layer.
    if (!options.readOnly) await syncFs(root)
    return result
  }, async attempt => {
    if (mounted) await attempt(() => umount(root))
  })
}

// syncfs(2) of a mounted filesystem, through coreutils: fails if any writeback failed.
async function syncFs (point: string): Promise<void> {
  const r = await run('sync', ['-f', point], { pkg: 'coreutils' })
  if (r.exitCode !== 0) throw IO_ERROR(`writing ${point} to its volume failed: ${lastLines(r.tail)}`)
}

// The device mounted at a point (the loop device mount -o loop chose).
export async function mountSource (point: string): Promise<string> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8')
  for (const line of info.split('\n')) {
    const f = line.split(' ')
    if (f[4] === point) return f[f.indexOf('-') + 2]!
  }
  throw new Error(`nothing is mounted on ${point}`)
}

// ext4 places small files in per-CPU preallocation groups, so where a file lands depends on
// which CPU wrote it. Treating every file as a stream (placed by its inode's goal) makes the
// layout follow the order of writes only, the same on every build.
async function streamAllocation (device: string): Promise<void> {
  const name = path.basename(await fs.realpath(device))
  await fs.writeFile(`/sys/fs/ext4/${name}/mb_stream_req`, '0').catch(() => {})
}

// A policy-rc.d that keeps services from starting, and DNS, put in place (inside the root,
// whatever its symlinks say) for the work and taken away again afterwards.
export async function withStepFiles<T> (root: string, setup: StepFiles, work: () => Promise<T>): Promise<T> {
  const undo: Array<() => Promise<void>> = []
  return settle(async () => {
    undo.push(await placeFile(root, '/usr/sbin/policy-rc.d', '#!/bin/sh\n# osfarm: no service starts while an image is built\nexit 101\n', 0o755))
    if (setup.network) {
      const resolv = await fs.readFile('/etc/resolv.conf').catch(() => Buffer.alloc(0))
      undo.push(await placeFile(root, '/etc/resolv.conf', resolv, 0o644))
    }
    return work()
  }, async attempt => {
    for (const u of undo.reverse()) await attempt(u)
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

// Puts a file in place for the step, setting aside whatever was there (file or symlink: the
// entry itself, never what a link points to), and returns how to put the original back.
async function placeFile (root: string, imagePath: string, content: string | Buffer, mode: number): Promise<() => Promise<void>> {
  const file = path.join(root, ...await resolveInRoot(root, imagePath, true, false))
  const saved = file + '.osfarm-saved'
  const had = await fs.lstat(file).then(() => true, () => false)
  if (had) await fs.rename(file, saved)
  const fh = await fs.open(file, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, mode)
  try {
    await fh.writeFile(content)
    await fh.chmod(mode)
  } finally {
    await fh.close()
  }
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
