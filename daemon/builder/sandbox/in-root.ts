// File work on an image's root from outside it, with the openat2 RESOLVE_IN_ROOT rule: every
// component of an image path, symlinks included, is resolved inside the root (an absolute link
// target starts again at the root, `..` stops there), and the final host path holds no symlink
// the OS could follow. Used by the step sandbox (sandbox-init.ts) only while no process of the
// image runs (each command's PID namespace is gone before the next file operation), so what
// was checked cannot change under it.

import fs from 'node:fs/promises'
import { constants as FS } from 'node:fs'
import path from 'node:path'
import { BUILD_FAILED, SIZE_TOO_SMALL } from '../../../protocol/errors.js'

const MAX_SYMLINKS = 40
const COPY_CHUNK = 1 << 20

export interface WriteOptions {
  mode: number
  uid: number
  gid: number
  // Seconds since the epoch for atime and mtime; 0 leaves them.
  epoch: number
}

// Resolves an absolute image path to its components under the root. With create, missing
// parent directories are made (0755). With followLast, a symlink as the last component is
// followed too (reading a file); without, it is the result (removing or replacing a link).
export async function resolveInRoot (root: string, imagePath: string, create: boolean, followLast = true): Promise<string[]> {
  const todo = imagePath.split('/').filter(Boolean)
  const done: string[] = []
  let links = 0
  while (todo.length) {
    const name = todo.shift()!
    if (name === '.') continue
    if (name === '..') { done.pop(); continue }
    const host = path.join(root, ...done, name)
    const last = todo.length === 0
    const st = await fs.lstat(host).catch(err => {
      if (err.code === 'ENOENT') return undefined
      throw err
    })
    if (st?.isSymbolicLink() && (!last || followLast)) {
      if (++links > MAX_SYMLINKS) throw BUILD_FAILED(`${imagePath}: too many levels of symbolic links in the image`)
      const target = await fs.readlink(host)
      if (target.startsWith('/')) done.length = 0
      todo.unshift(...target.split('/').filter(Boolean))
      continue
    }
    if (!st) {
      if (last) { done.push(name); break }
      if (!create) throw BUILD_FAILED(`${imagePath}: ${path.join('/', ...done, name)} does not exist in the image`)
      await fs.mkdir(host, { mode: 0o755 })
      await fs.chmod(host, 0o755)
    } else if (!last && !st.isDirectory()) {
      throw BUILD_FAILED(`${imagePath}: ${path.join('/', ...done, name)} is not a directory in the image`)
    }
    done.push(name)
  }
  if (!done.length) throw BUILD_FAILED(`${imagePath} resolves to the root directory`)
  return done
}

// The host path of an image path, resolved inside the root; undefined if a parent is missing.
export async function hostPath (root: string, imagePath: string, followLast = true): Promise<string | undefined> {
  const parts = await resolveInRoot(root, imagePath, false, followLast).catch(err => {
    if (/does not exist|is not a directory/.test((err as Error).message)) return undefined
    throw err
  })
  return parts && path.join(root, ...parts)
}

export async function lstatInRoot (root: string, imagePath: string, followLast = true): Promise<import('node:fs').Stats | undefined> {
  const host = await hostPath(root, imagePath, followLast)
  return host ? fs.lstat(host).catch(() => undefined) : undefined
}

export async function readInRoot (root: string, imagePath: string): Promise<string | undefined> {
  const host = await hostPath(root, imagePath)
  if (!host) return undefined
  const fh = await fs.open(host, FS.O_RDONLY | FS.O_NOFOLLOW | FS.O_NONBLOCK).catch(() => undefined)
  if (!fh) return undefined
  try {
    if (!(await fh.stat()).isFile()) return undefined
    return await fh.readFile('utf8')
  } finally {
    await fh.close()
  }
}

export async function readdirInRoot (root: string, imagePath: string): Promise<string[]> {
  const host = await hostPath(root, imagePath)
  if (!host || !(await fs.lstat(host).then(st => st.isDirectory(), () => false))) return []
  return fs.readdir(host)
}

// Removes a file or symlink (never what a link points to); a directory is left alone.
export async function removeInRoot (root: string, imagePath: string): Promise<boolean> {
  const host = await hostPath(root, imagePath, false)
  if (!host) return false
  const st = await fs.lstat(host).catch(() => undefined)
  if (!st || st.isDirectory()) return false
  await fs.unlink(host)
  return true
}

// Writes a file at an image path as a chroot would see it, replacing what is there. (A FIFO or
// device node there is never opened for long: O_NONBLOCK, and the root is mounted nodev.)
export async function writeInRoot (root: string, imagePath: string, data: Buffer | string, o: WriteOptions): Promise<string> {
  return putInRoot(root, imagePath, o, fh => fh.writeFile(data))
}

// Copies a host file (daemon-owned: trusted, a regular file) to an image path, streamed.
export async function copyInRoot (root: string, imagePath: string, source: string, o: WriteOptions): Promise<string> {
  const src = await fs.open(source, FS.O_RDONLY | FS.O_NOFOLLOW)
  try {
    if (!(await src.stat()).isFile()) throw BUILD_FAILED(`${imagePath}: its source is not a regular file`)
    return await putInRoot(root, imagePath, o, async fh => {
      const buf = Buffer.allocUnsafe(COPY_CHUNK)
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, COPY_CHUNK, null)
        if (!bytesRead) return
        for (let off = 0; off < bytesRead;) off += (await fh.write(buf, off, bytesRead - off)).bytesWritten
      }
    })
  } finally {
    await src.close()
  }
}

async function putInRoot (root: string, imagePath: string, o: WriteOptions, fill: (fh: fs.FileHandle) => Promise<void>): Promise<string> {
  const host = path.join(root, ...await resolveInRoot(root, imagePath, true))
  const noSpace = (err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOSPC') throw SIZE_TOO_SMALL(`no space left for ${imagePath}`)
    throw err
  }
  const fh = await fs.open(host, FS.O_WRONLY | FS.O_CREAT | FS.O_TRUNC | FS.O_NOFOLLOW | FS.O_NONBLOCK, o.mode).catch(err => {
    if (err.code === 'EISDIR') throw BUILD_FAILED(`${imagePath} is a directory in the image`)
    if (err.code === 'ELOOP') throw BUILD_FAILED(`${imagePath}: too many levels of symbolic links in the image`)
    return noSpace(err)
  })
  try {
    if (!(await fh.stat()).isFile()) throw BUILD_FAILED(`${imagePath} is not a regular file in the image`)
    await fill(fh).catch(noSpace)
    await fh.chown(o.uid, o.gid)
    await fh.chmod(o.mode)
    if (o.epoch) await fh.utimes(o.epoch, o.epoch)
  } finally {
    await fh.close()
  }
  return host
}
