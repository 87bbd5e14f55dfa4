// Host paths that osfarmd opens for root (import, export, spec file sources): a source is opened
// once, without blocking, and must be a regular file (or a block device where allowed) under a
// size cap, read in chunks; an export target is a regular file outside the data dir, written
// beside it and renamed over it only if it is (still) a regular file or absent.

import fs, { type FileHandle } from 'node:fs/promises'
import { constants as FS } from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { IO_ERROR, NO_SPACE, OsfarmError, SOURCE_CHANGED, SOURCE_EMPTY, STORE_FULL, TARGET_UNWRITABLE } from '../../protocol/errors.js'
import { deviceSize } from '../blocks/block-hasher.js'

// Defaults of the config keys maxSourceBytes (a spec's files[].source) and maxRootfsBytes (a
// spec's rootfs tarball: a whole root filesystem).
export { DEFAULT_MAX_ROOTFS_BYTES, DEFAULT_MAX_SOURCE_BYTES } from '../../protocol/config.js'
const READ_CHUNK_BYTES = 1 << 20

export interface SourceOptions {
  // What the caller named the path by ("path", "files[2].source", "rootfs"): every refusal starts with it.
  field: string
  // Refuse sources larger than this; `limitKey` names the setting in the message (the config's
  // maxSourceBytes for files[].source, maxRootfsBytes for rootfs).
  maxBytes?: number
  limitKey?: string
  allowBlockDevice?: boolean
  // SOURCE_INVALID for import; SPEC_INVALID for a spec's fields.
  code?: 'SOURCE_INVALID' | 'SPEC_INVALID'
  // Refuse an empty file (SOURCE_EMPTY).
  refuseEmpty?: boolean
}

export interface Source {
  path: string
  field: string
  handle: FileHandle
  size: number
  kind: 'file' | 'block-device'
}

// Opens a source once (O_NONBLOCK, so a FIFO or a tty never blocks the open), then decides on
// what the descriptor is, not on what the path was a moment before.
export async function openSource (file: string, opts: SourceOptions): Promise<Source> {
  const refuse = (why: string) => new OsfarmError(opts.code ?? 'SOURCE_INVALID', `${opts.field}: ${file} ${why}`, { field: opts.field, path: file })
  if (!path.isAbsolute(file)) throw refuse('is not an absolute path')
  // A cheap look first, so a device that acts on open (a tape, a modem) is never opened; the
  // descriptor's fstat below is what decides.
  const pre = await fs.stat(file).catch(err => { throw refuse(`cannot be read: ${errnoText(err)}`) })
  const preWhy = kindRefusal(pre, opts.allowBlockDevice ?? false)
  if (preWhy) throw refuse(preWhy)
  const handle = await fs.open(file, FS.O_RDONLY | FS.O_NONBLOCK | FS.O_NOCTTY).catch(err => { throw refuse(`cannot be read: ${errnoText(err)}`) })
  try {
    const st = await handle.stat()
    const why = kindRefusal(st, opts.allowBlockDevice ?? false)
    if (why) throw refuse(why)
    const kind = st.isFile() ? 'file' : 'block-device'
    // The descriptor's own device, through /proc, not the path again.
    const size = kind === 'file' ? st.size : await deviceSize(`/proc/self/fd/${handle.fd}`)
    if (opts.maxBytes !== undefined && size > opts.maxBytes) {
      throw refuse(`is ${size} bytes, over the limit of ${opts.maxBytes}${opts.limitKey ? ` (config ${opts.limitKey})` : ''}`)
    }
    if (opts.refuseEmpty && size === 0) throw SOURCE_EMPTY(`${opts.field}: ${file} is empty`, { field: opts.field, path: file })
    return { path: file, field: opts.field, handle, size, kind }
  } catch (err) {
    await handle.close().catch(() => {})
    throw err
  }
}

function kindRefusal (st: { isFile (): boolean, isDirectory (): boolean, isFIFO (): boolean, isSocket (): boolean, isCharacterDevice (): boolean, isBlockDevice (): boolean, isSymbolicLink (): boolean }, allowBlock: boolean): string | undefined {
  if (st.isFile()) return undefined
  if (st.isBlockDevice()) return allowBlock ? undefined : 'is a block device, not a regular file'
  if (st.isDirectory()) return 'is a directory'
  if (st.isFIFO()) return 'is a FIFO (named pipe), not a regular file'
  if (st.isSocket()) return 'is a socket, not a regular file'
  if (st.isCharacterDevice()) return 'is a character device, not a regular file'
  return 'is not a regular file'
}

// Fills buf[offset, offset+length) from `position`; a source that ends first changed under us.
export async function readFully (fh: FileHandle, buf: Buffer, offset: number, length: number, position: number, what: string, size: number): Promise<void> {
  let got = 0
  while (got < length) {
    let bytesRead: number
    try {
      ({ bytesRead } = await fh.read(buf, offset + got, length - got, position + got))
    } catch (err) {
      throw IO_ERROR(`reading ${what} at byte ${position + got}: ${errnoText(err)}`, { path: what })
    }
    if (bytesRead === 0) throw SOURCE_CHANGED(`${what} ended at byte ${position + got} of ${size}: it shrank while it was read`, { path: what })
    got += bytesRead
  }
}

// A source's bytes in chunks (never the whole at once); SOURCE_CHANGED if it ends early.
export async function * readChunks (src: Source, o: { chunkBytes?: number, signal?: AbortSignal } = {}): AsyncGenerator<Buffer> {
  const chunk = o.chunkBytes ?? READ_CHUNK_BYTES
  for (let pos = 0; pos < src.size;) {
    o.signal?.throwIfAborted()
    const n = Math.min(chunk, src.size - pos)
    const buf = Buffer.allocUnsafe(n)
    await readFully(src.handle, buf, 0, n, pos, src.path, src.size)
    pos += n
    yield buf
  }
}

// Maps a write error to a code that names the path: ENOSPC/EDQUOT to `full` (STORE_FULL when
// the store is what filled, NO_SPACE for an export's target), EIO to IO_ERROR.
export function writeError (err: unknown, file: string, full: 'STORE_FULL' | 'NO_SPACE'): OsfarmError {
  if (err instanceof OsfarmError) return err
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    const make = full === 'STORE_FULL' ? STORE_FULL : NO_SPACE
    return make(`no space left on the filesystem of ${file} (${code})`, { path: file })
  }
  if (code === 'EIO') return IO_ERROR(`writing ${file}: EIO`, { path: file })
  return OsfarmError.from(err)
}

export interface ExportTargetOptions {
  dataDir: string
  // Never written or replaced: the daemon's sockets, its config file.
  protectedPaths?: string[]
}

export interface ExportTarget {
  // The target with its parent's symlinks resolved.
  path: string
  // The file being written (in the target's directory), renamed over `path` by commit().
  tmpPath: string
  handle: FileHandle
  // Syncs and closes the handle (if still open), checks the target again, renames.
  commit (): Promise<void>
  // Closes and removes the temporary file.
  abort (): Promise<void>
}

// Claims a temporary file beside `target` after checking that the target may be replaced.
export async function createExportTarget (target: string, opts: ExportTargetOptions): Promise<ExportTarget> {
  const refuse = (why: string) => TARGET_UNWRITABLE(`${target} ${why}`, { path: target })
  if (!path.isAbsolute(target)) throw refuse('is not an absolute path')
  const base = path.basename(target)
  if (base === '' || base === '.' || base === '..' || target.endsWith('/')) throw refuse('names a directory')
  const parent = await fs.realpath(path.dirname(target)).catch(err => { throw refuse(`cannot be written: its directory ${path.dirname(target)} ${err.code === 'ENOENT' ? 'does not exist' : `is unusable (${errnoText(err)})`}`) })
  const resolved = path.join(parent, base)
  await checkReplaceable(resolved, target, opts)
  const tmpPath = path.join(parent, `.${base}.osfarm-${randomBytes(4).toString('hex')}`)
  const handle = await fs.open(tmpPath, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o644).catch(err => {
    throw refuse(`cannot be written: ${errnoText(err)}`)
  })
  let closed = false
  const close = async () => { if (!closed) { closed = true; await handle.close() } }
  return {
    path: resolved,
    tmpPath,
    handle,
    async commit () {
      try {
        // (A converter may have had the file by name, with the handle closed.)
        if (!closed && handle.fd !== -1) {
          await handle.sync().catch(err => { throw writeError(err, resolved, 'NO_SPACE') })
          await close()
        }
        // Checked again: the path may have become something else while the job ran.
        await checkReplaceable(resolved, target, opts)
        await fs.rename(tmpPath, resolved).catch(err => { throw refuse(`cannot be replaced: ${errnoText(err)}`) })
      } catch (err) {
        await fs.rm(tmpPath, { force: true }).catch(() => {})
        throw err
      }
    },
    async abort () {
      await close().catch(() => {})
      await fs.rm(tmpPath, { force: true }).catch(() => {})
    }
  }
}

async function checkReplaceable (resolved: string, target: string, opts: ExportTargetOptions): Promise<void> {
  const refuse = (why: string) => TARGET_UNWRITABLE(`${target} ${why}`, { path: target })
  const dataDir = await fs.realpath(opts.dataDir).catch(() => path.resolve(opts.dataDir))
  if (within(resolved, dataDir)) throw refuse(`is inside osfarmd's data directory ${dataDir}`)
  for (const p of opts.protectedPaths ?? []) {
    const real = await realParent(p)
    if (resolved === real) throw refuse('is a file osfarmd uses (its socket or config)')
  }
  const st = await fs.lstat(resolved).catch(err => {
    if (err.code === 'ENOENT') return undefined
    throw refuse(`cannot be examined: ${errnoText(err)}`)
  })
  if (!st || st.isFile()) return
  if (st.isSymbolicLink()) throw refuse('is a symbolic link; name the file it points to')
  if (st.isDirectory()) throw refuse('is a directory')
  if (st.isCharacterDevice() || st.isBlockDevice()) throw refuse('is a device node; export writes regular files only')
  if (st.isSocket()) throw refuse('is a socket; export writes regular files only')
  if (st.isFIFO()) throw refuse('is a FIFO; export writes regular files only')
  throw refuse('is not a regular file')
}

async function realParent (p: string): Promise<string> {
  const abs = path.resolve(p)
  const dir = await fs.realpath(path.dirname(abs)).catch(() => path.dirname(abs))
  return path.join(dir, path.basename(abs))
}

function within (p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir.endsWith('/') ? dir : dir + '/')
}

function errnoText (err: unknown): string {
  const e = err as NodeJS.ErrnoException
  if (e.code === 'ENOENT') return 'no such file'
  if (e.code === 'EACCES' || e.code === 'EPERM') return `permission denied (${e.code})`
  return e.code ?? e.message
}
