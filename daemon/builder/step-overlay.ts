// A step's changes made on an overlay and written into its layer from one process in one
// order, so where files land depends on the step's result only, never on its timing. Runs in
// the step's sandbox (sandbox/sandbox-init.ts).
//
// The kernel places a new inode and its blocks by what is free at that moment. Maintainer
// scripts (adduser, ucf, update-rc.d, ldconfig) replace files by rename while other processes
// still hold the old ones, and the old inode is freed at its holder's last close: whether the
// next file reuses it is a matter of timing, and mount options cannot make that repeat. So the
// step's commands see an overlay (the layer below, read-only in effect; a scratch upper dir on
// a filesystem of its own, as large as the layer's free space, above). Afterwards what the
// step removed is removed from the layer, in sorted order, and what it wrote is archived from
// the upper dir by `tar --sort=name` and unpacked into the layer by one tar process: the same
// result gives the same sequence of allocations on the same parent, and so the same blocks.

import fs from 'node:fs/promises'
import path from 'node:path'
import { BUILD_FAILED, IO_ERROR, SIZE_TOO_SMALL } from '../../protocol/errors.js'
import { lastLines, run } from '../tools/run.js'
import { readOnlyHostArgv } from './sandbox/enter-root.js'
import { makeScratchFs, normalizeTimes } from './tools/mke2fs.js'
import { mount, umount } from './tools/mount.js'
import { MOUNT_OPTIONS, mountSource, withMountedVolume } from './mounted-root.js'
import { scanInodes } from './ext4-inodes.js'
import { hostFull, hostFullError } from './host-space.js'

// The upper filesystem is never smaller than this (metadata, apt's small writes).
const MIN_UPPER_BYTES = 64 << 20
// How long the kernel may take to tear the overlay down after its last unmount.
const RELEASE_WAIT_MS = 60_000

export interface StepChanges {
  // Image paths the step removed (or replaced by another type), sorted.
  removed: string[]
  // Entries written (files, dirs, links) as tar counts them.
  written: number
  // How long the overlay took to be released after its unmount.
  releaseMs: number
}

// Mounts the volume (at scratch/layer), runs work with `root` (scratch/root) as the merged view
// of the layer and a fresh upper dir, writes the changes into the layer and runs finish on it
// (still mounted). scratch: an empty directory of the builder's, removed by it afterwards
// (nothing of it is mounted once this returns).
export async function withStepOverlay<T> (volume: string, scratch: string, epoch: number, work: (root: string) => Promise<void>, finish: (layer: string) => Promise<T>): Promise<{ changes: StepChanges, result: T }> {
  if (/[,:\\\s]/.test(scratch)) throw BUILD_FAILED(`the build dir ${scratch} cannot be used for an overlay (it holds a comma, colon, backslash or space)`)
  const layerDir = path.join(scratch, 'layer')
  const root = path.join(scratch, 'root')
  const upperFs = path.join(scratch, 'upper')
  const image = path.join(scratch, 'upper.img')
  const upper = path.join(upperFs, 'upper')
  for (const d of [layerDir, root, upperFs]) await fs.mkdir(d)
  const mountUpper = () => mount(image, upperFs, { type: 'ext4', options: ['loop', 'nodev', ...MOUNT_OPTIONS] })
  let upperMounted = false
  try {
    let removed: string[] = []
    let releaseMs = 0
    await withMountedVolume(volume, layerDir, async layer => {
      const stat = await fs.statfs(layer)
      await makeScratchFs(image, Math.max(MIN_UPPER_BYTES, stat.bavail * stat.bsize), scratch)
      await mountUpper()
      upperMounted = true
      const workDir = path.join(upperFs, 'work')
      await fs.mkdir(workDir)
      // The merged root takes the upper dir's owner and mode: the layer's own.
      const top = await fs.lstat(layer)
      await fs.mkdir(upper, top.mode & 0o7777)
      await fs.chown(upper, top.uid, top.gid)
      await fs.chmod(upper, top.mode & 0o7777)
      // redirect_dir and metacopy off: a renamed lower dir is copied up whole and a changed
      // file holds its data, so the upper dir is plain files, dirs, links and whiteouts.
      await mount('overlay', root, { type: 'overlay', options: [`lowerdir=${layer}`, `upperdir=${upper}`, `workdir=${workDir}`, 'redirect_dir=off', 'metacopy=off', 'index=off', 'xino=off', 'nodev'] })
      try {
        await work(root)
        removed = await removedEntries(layer, upper, root)
      } finally {
        await umount(root)
      }
      // The overlay's superblock outlives this unmount while a copy of its mount in a
      // command's namespace is still being torn down, and it holds layer inodes. Its last act
      // is dropping its clone of the upper mount: once the upper filesystem's loop device has
      // detached itself (autoclear), nothing but this mount holds the layer.
      const device = await mountSource(upperFs)
      await umount(upperFs)
      upperMounted = false
      const t0 = performance.now()
      await detached(device, image)
      releaseMs = performance.now() - t0
      for (const rel of removed) await fs.rm(path.join(layer, rel), { recursive: true, force: true })
    })
    // ext4 without a journal does not reuse an inode deleted in the last minute or more while
    // its inode table block is in the buffer cache (it may not be on disk yet): which inodes
    // the new files get would depend on the clock and the cache. The removed inodes' records
    // are cleared on the unmounted layer (no deletion time), so none counts as recent.
    await normalizeTimes(volume, epoch, [], (await scanInodes(volume)).dirtyFree)
    await mountUpper()
    upperMounted = true
    await dropWhiteouts(upper)
    return await withMountedVolume(volume, layerDir, async layer => {
      const written = await copyTree(upper, layer)
      return { changes: { removed: removed.map(r => '/' + r), written, releaseMs }, result: await finish(layer) }
    })
  } catch (err) {
    // Asked while the upper filesystem still holds what it took.
    const full = await hostFull([scratch, path.dirname(volume)])
    throw full ? hostFullError('the step', full) : err
  } finally {
    if (upperMounted) await umount(upperFs)
  }
}

// Waits (bounded) until a loop device no longer holds the given file.
async function detached (device: string, file: string): Promise<void> {
  const backing = `/sys/block/${path.basename(device)}/loop/backing_file`
  const deadline = Date.now() + RELEASE_WAIT_MS
  for (;;) {
    const held = await fs.readFile(backing, 'utf8').then(t => t.trim().replace(/ \(deleted\)$/, '') === file, () => false)
    if (!held) return
    if (Date.now() > deadline) throw IO_ERROR(`the step's overlay was not released within ${RELEASE_WAIT_MS / 1000} s (${device} still holds ${file})`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

// What the step took away: in each directory the upper dir holds (and the layer holds as a
// directory too), the layer's entries the merged view no longer shows (a whiteout, an opaque
// dir) or shows as another type (the upper entry replaces it whole). Read while the overlay is
// mounted and no process of the image runs. Every path walked is a real directory in both
// trees, so nothing here follows a link.
async function removedEntries (lower: string, upper: string, merged: string): Promise<string[]> {
  const out: string[] = []
  const visit = async (rel: string, lowerIsDir: boolean): Promise<void> => {
    const entries = (await fs.readdir(path.join(upper, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))
    const lowerTypes = new Map<string, string>()
    if (lowerIsDir) {
      const shown = new Set(await fs.readdir(path.join(merged, rel)))
      for (const e of await fs.readdir(path.join(lower, rel), { withFileTypes: true })) {
        const type = e.isDirectory() ? 'dir' : 'other'
        lowerTypes.set(e.name, type)
        if (!shown.has(e.name)) out.push(path.join(rel, e.name))
      }
      for (const e of entries) {
        const was = lowerTypes.get(e.name)
        if (!was || !shown.has(e.name)) continue
        // Anything the upper dir replaces goes first (tar then only creates: every inode is
        // freed before the first new one is taken); a dir over a dir is merged.
        if (!(e.isDirectory() && was === 'dir')) out.push(path.join(rel, e.name))
      }
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue
      const child = path.join(rel, e.name)
      await visit(child, lowerIsDir && lowerTypes.get(e.name) === 'dir' && !out.includes(child))
    }
  }
  await visit('', true)
  return out.sort()
}

// Whiteouts (character devices 0:0) mark removals, already applied: they are not content.
async function dropWhiteouts (upper: string): Promise<void> {
  const visit = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) await visit(p)
      else if (e.isCharacterDevice() && (await fs.lstat(p)).rdev === 0) await fs.unlink(p)
    }
  }
  await visit(upper)
}

// One archive in name order, piped to one tar that unpacks it (no copy of the changes is
// kept anywhere: the upper filesystem is only as large as the layer's free space). The
// unpacking tar runs with the host read-only except the layer, so whatever the step's links
// point to, it writes nowhere else.
async function copyTree (from: string, to: string): Promise<number> {
  const xattrs = ['--xattrs', '--xattrs-include=*', '--xattrs-exclude=trusted.overlay.*', '--acls']
  const pack = ['tar', '-C', from, '--sort=name', '--numeric-owner', ...xattrs, '-cf', '-', '.']
  // -P: links are made as they come, not as placeholders replaced at the end (the archive is
  // ours, made from a real tree: no member lies under a link or climbs with ..).
  const unpack = ['unshare', '--mount', '--propagation', 'private', '--', ...readOnlyHostArgv([to], ['tar', '-C', to, '-x', '-p', '-P', '--numeric-owner', ...xattrs, '-v', '-f', '-'])]
  // bash, for pipefail: either tar failing fails the copy. $1 counts the packing tar's words.
  // eslint-disable-next-line no-template-curly-in-string -- a shell's expansion, not a template
  const pipe = 'set -o pipefail; n=$1; shift; "${@:1:n}" | "${@:n+1}"'
  const x = await run('bash', ['-c', pipe, 'bash', String(pack.length), ...pack, ...unpack], { pkg: 'bash' })
  if (x.exitCode !== 0) {
    if (x.tail.some(l => /No space left on device/.test(l))) throw SIZE_TOO_SMALL(`the layer has no room for the step's changes: ${lastLines(x.tail, 2)}`)
    throw IO_ERROR(`writing the step's changes into the layer failed: ${lastLines(x.tail)}`)
  }
  return x.stdout.split('\n').filter(Boolean).length
}
