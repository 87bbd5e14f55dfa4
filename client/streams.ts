// osfarmctl's end of the API's byte streams (protocol/stream.ts): files are opened here, with the
// rights of whoever runs osfarmctl, and only their bytes reach osfarmd. Uploads skip zero blocks
// (the daemon's volume stays sparse); downloads write a sparse file, or zeros to a pipe.

import fs, { type FileHandle } from 'node:fs/promises'
import { constants as FS } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { BAD_PARAMS, DAEMON_UNREACHABLE, IO_ERROR, NO_SPACE, OsfarmError, PERMISSION_DENIED, PROTOCOL_ERROR, SOURCE_CHANGED, SOURCE_EMPTY, SOURCE_INVALID, TARGET_UNWRITABLE } from '../protocol/errors.js'
import { DATA, END, MAX_STREAM_DATA, RESULT, WriteWindow, nonZeroRuns, parseResult, readFrames, sendFrame, type Frame, type Sink } from '../protocol/stream.js'

// A file or device read with the caller's own rights; `-` is stdin.
export interface LocalSource {
  name: string
  handle: FileHandle
  // Known up front for files and block devices; for a pipe, the caller must say it.
  size: number
  // Read by position (a file or device), or in order (a pipe).
  seekable: boolean
  close (): Promise<void>
}

// `image`: a file, block device or pipe (with its size given); `file`: a regular file only (a
// spec's source).
export async function openLocalSource (file: string, opts: { field: string, size?: number, kind: 'image' | 'file' }): Promise<LocalSource> {
  const name = file === '-' ? 'stdin' : file
  const handle = file === '-'
    ? await fs.open('/dev/stdin', FS.O_RDONLY)
    : await fs.open(file, FS.O_RDONLY | FS.O_NONBLOCK | FS.O_NOCTTY).catch(err => { throw openError(err, opts.field, file) })
  try {
    const st = await handle.stat()
    if (opts.kind === 'file' && !st.isFile()) throw SOURCE_INVALID(`${opts.field}: ${name} is not a regular file`)
    let size: number
    let seekable = true
    if (st.isFile()) size = st.size
    else if (st.isBlockDevice()) size = await blockDeviceSize(handle)
    else if (st.isFIFO() || (file === '-' && !st.isDirectory())) {
      if (opts.size === undefined) throw BAD_PARAMS(`${opts.field}: ${name} is a pipe, so its size is unknown: give --size`)
      size = opts.size
      seekable = false
    } else {
      throw SOURCE_INVALID(`${opts.field}: ${name} is ${st.isDirectory() ? 'a directory' : 'not a regular file, block device or pipe'}`)
    }
    if (file !== '-' && !seekable) {
      // Reads of a FIFO opened without blocking would fail with EAGAIN; reopen it blocking.
      await handle.close()
      return { name, handle: await fs.open(file, FS.O_RDONLY), size, seekable, close: async () => {} }
    }
    if (opts.size !== undefined && seekable && opts.size !== size) throw BAD_PARAMS(`${opts.field}: --size ${opts.size} is not the size of ${name} (${size} bytes)`)
    return { name, handle, size, seekable, close: () => handle.close() }
  } catch (err) {
    await handle.close().catch(() => {})
    throw err
  }
}

// Opens a stream connection with its token (the answer of image.upload and the like).
export async function attachStream (socketPath: string, token: string): Promise<{ socket: net.Socket, rest: Buffer }> {
  const socket = net.connect(socketPath)
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', (err: NodeJS.ErrnoException) => reject(DAEMON_UNREACHABLE(`cannot connect to ${socketPath} (${err.code})`)))
  })
  socket.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'stream.attach', params: { token } }) + '\n')
  let buffered = Buffer.alloc(0)
  const line = await new Promise<Buffer>((resolve, reject) => {
    const onData = (d: Buffer) => {
      buffered = Buffer.concat([buffered, d])
      const nl = buffered.indexOf(10)
      if (nl === -1) return
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.pause()
      resolve(buffered.subarray(0, nl))
      buffered = buffered.subarray(nl + 1)
    }
    const onClose = () => reject(DAEMON_UNREACHABLE('osfarmd closed the stream before attaching it'))
    socket.on('data', onData)
    socket.once('close', onClose)
  })
  let answer: { error?: { message?: string, data?: { code?: string } } }
  try { answer = JSON.parse(line.toString('utf8')) } catch { throw PROTOCOL_ERROR('osfarmd answered stream.attach with something other than JSON') }
  if (answer.error) { socket.destroy(); throw new OsfarmError('NOT_FOUND', answer.error.message ?? 'the stream was refused') }
  return { socket, rest: buffered }
}

// Sends a source's bytes (zero blocks skipped) then END, and returns the RESULT's value.
export async function upload (socketPath: string, token: string, src: LocalSource, onProgress?: (done: number, total: number) => void): Promise<unknown> {
  const { socket, rest } = await attachStream(socketPath, token)
  const frames = readFrames(socket as AsyncIterable<Buffer>, rest)
  // The daemon may refuse mid-way (a full store): its RESULT ends the upload.
  const answer = nextResult(frames)
  let failed: unknown
  answer.catch(err => { failed = err })
  try {
    // The next chunk is read while this one is sent.
    const read = (at: number) => {
      const chunk = Buffer.allocUnsafe(Math.min(MAX_STREAM_DATA, src.size - at))
      return readSome(src, chunk, at).then(got => ({ chunk, got }))
    }
    let pos = 0
    let next = src.size > 0 ? read(0) : undefined
    // `failed` is set by the socket's error handler.
    // eslint-disable-next-line no-unmodified-loop-condition
    while (next && failed === undefined && !socket.destroyed) {
      const { chunk, got } = await next
      next = pos + got < src.size ? read(pos + got) : undefined
      // An unread prefetch must not become an unhandled rejection if the loop stops here.
      next?.catch(() => {})
      for (const [a, b] of nonZeroRuns(chunk, got)) await sendFrame(socket as Sink, DATA, pos + a, chunk.subarray(a, b))
      pos += got
      onProgress?.(pos, src.size)
    }
    if (failed === undefined && !socket.destroyed) await sendFrame(socket as Sink, END, src.size)
  } catch (err) {
    socket.destroy()
    // The daemon's reason, where it gave one, explains a broken write best.
    await answer.catch(() => {})
    throw failed ?? err
  }
  try {
    return await answer
  } finally {
    socket.destroy()
  }
}

// Reads the next chunk: the whole of it from a file or device (SOURCE_CHANGED if it ends early),
// what a pipe has (at least one byte; SOURCE_CHANGED at an early end).
async function readSome (src: LocalSource, chunk: Buffer, pos: number): Promise<number> {
  let got = 0
  while (got < chunk.length) {
    const { bytesRead } = await src.handle.read(chunk, got, chunk.length - got, src.seekable ? pos + got : null).catch(err => {
      throw IO_ERROR(`reading ${src.name} at byte ${pos + got}: ${err.code ?? err.message}`)
    })
    if (bytesRead === 0) throw SOURCE_CHANGED(`${src.name} ended at byte ${pos + got} of ${src.size}${src.seekable ? ': it shrank while it was read' : ''}`)
    got += bytesRead
  }
  return got
}

async function nextResult (frames: AsyncGenerator<Frame>): Promise<unknown> {
  // The first frame only (leaving the loop closes the generator).
  // eslint-disable-next-line no-unreachable-loop
  for await (const f of frames) {
    if (f.type === RESULT) return parseResult(f.payload)
    throw PROTOCOL_ERROR('osfarmd sent data on an upload stream')
  }
  throw DAEMON_UNREACHABLE('osfarmd closed the stream before answering')
}

// Where a download goes: a new file (written beside the target, renamed over it at the end) or stdout.
export interface DownloadTarget {
  // Frames must be written one after the other (a pipe), not several at once.
  ordered: boolean
  write (frame: Frame): Promise<void>
  // The stream ended at `size` bytes.
  finish (size: number): Promise<void>
  abort (): Promise<void>
  path: string
}

export async function fileTarget (target: string): Promise<DownloadTarget> {
  const abs = path.resolve(target)
  const st = await fs.lstat(abs).catch(() => undefined)
  if (st && !st.isFile()) throw TARGET_UNWRITABLE(`${abs} exists and is not a regular file; export writes regular files (or - for stdout)`)
  const tmp = path.join(path.dirname(abs), `.${path.basename(abs)}.osfarm-${randomBytes(4).toString('hex')}`)
  const fh = await fs.open(tmp, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o644).catch(err => {
    throw err.code === 'EACCES' || err.code === 'EPERM' ? PERMISSION_DENIED(`cannot write ${abs}: ${err.code}`) : TARGET_UNWRITABLE(`cannot write ${abs}: ${err.code ?? err.message}`)
  })
  let end = 0
  return {
    path: abs,
    ordered: false,
    async write (f) {
      await writeAll(fh, f.payload, f.offset, abs)
      end = Math.max(end, f.offset + f.payload.length)
    },
    async finish (size) {
      if (end > size) throw PROTOCOL_ERROR(`osfarmd sent data past the end it announced (${size} bytes)`)
      await fh.truncate(size).catch(err => { throw writeFailure(err, abs) })
      await fh.sync().catch(err => { throw writeFailure(err, abs) })
      await fh.close()
      await fs.rename(tmp, abs).catch(err => { throw TARGET_UNWRITABLE(`cannot replace ${abs}: ${err.code ?? err.message}`) })
    },
    async abort () {
      await fh.close().catch(() => {})
      await fs.rm(tmp, { force: true })
    }
  }
}

// A pipe cannot seek: holes become zeros, written in order.
export function stdoutTarget (): DownloadTarget {
  let pos = 0
  const out = process.stdout
  const put = async (buf: Buffer) => { if (!out.write(buf)) await new Promise<void>(resolve => out.once('drain', resolve)) }
  const zeros = Buffer.alloc(MAX_STREAM_DATA)
  const fill = async (to: number) => {
    while (pos < to) {
      const n = Math.min(zeros.length, to - pos)
      await put(zeros.subarray(0, n))
      pos += n
    }
  }
  return {
    path: '-',
    ordered: true,
    async write (f) {
      if (f.offset < pos) throw PROTOCOL_ERROR('osfarmd sent a download out of order')
      await fill(f.offset)
      await put(f.payload)
      pos += f.payload.length
    },
    async finish (size) { await fill(size) },
    async abort () {}
  }
}

// Receives a download into `target`; returns its size.
export async function download (socketPath: string, token: string, target: DownloadTarget): Promise<number> {
  const { socket, rest } = await attachStream(socketPath, token)
  const writes = new WriteWindow(target.ordered ? 1 : 8)
  let next = 0
  try {
    for await (const f of readFrames(socket as AsyncIterable<Buffer>, rest)) {
      if (f.type === DATA) {
        // Writes in flight together must not overlap.
        if (f.offset < next) throw PROTOCOL_ERROR('osfarmd sent a download out of order')
        next = f.offset + f.payload.length
        await writes.add(target.write(f))
        continue
      }
      await writes.drain()
      if (f.type === END) { await target.finish(f.offset); return f.offset }
      parseResult(f.payload)
      throw PROTOCOL_ERROR('osfarmd ended the download with a result')
    }
    throw DAEMON_UNREACHABLE('osfarmd closed the download before its end')
  } catch (err) {
    await target.abort()
    throw err
  } finally {
    socket.destroy()
  }
}

async function writeAll (fh: FileHandle, buf: Buffer, position: number, file: string): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off).catch(err => { throw writeFailure(err, file) })
    off += bytesWritten
  }
}

function writeFailure (err: NodeJS.ErrnoException, file: string): OsfarmError {
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return NO_SPACE(`no space left to write ${file} (${err.code})`)
  return IO_ERROR(`writing ${file}: ${err.code ?? err.message}`)
}

function openError (err: NodeJS.ErrnoException, field: string, file: string): OsfarmError {
  if (err.code === 'EACCES' || err.code === 'EPERM') return PERMISSION_DENIED(`${field}: ${file}: you may not read it (${err.code})`)
  if (err.code === 'ENOENT') return SOURCE_INVALID(`${field}: ${file}: no such file`)
  return SOURCE_INVALID(`${field}: cannot read ${file}: ${err.code ?? err.message}`)
}

// A block device's size, from sysfs (fstat reports 0 for devices).
async function blockDeviceSize (handle: FileHandle): Promise<number> {
  const st = await handle.stat({ bigint: true })
  const major = ((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn)
  const minor = (st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn)
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim())
  if (!sectors) throw SOURCE_EMPTY('the block device is empty')
  return sectors * 512
}
