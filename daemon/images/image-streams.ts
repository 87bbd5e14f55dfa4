// The daemon's side of image bytes on an API stream (protocol/stream.ts): an upload written into
// a new volume, a download read off one. Holes are never sent: the receiver's file is sparse and
// reads zeros wherever no DATA frame fell.

import type { FileHandle } from 'node:fs/promises'
import { IO_ERROR, JOB_CANCELLED, OsfarmError, PROTOCOL_ERROR, SOURCE_CHANGED, STORE_FULL } from '../../protocol/errors.js'
import { DATA, END, MAX_STREAM_DATA, WriteWindow, nonZeroRuns, sendFrame, sendResult } from '../../protocol/stream.js'
import type { JobContext } from '../jobs/jobs.js'
import type { StreamConnection } from '../rpc/streams.js'
import type { DataRanges } from '../blocks/data-ranges.js'

// Receives an upload of exactly `size` bytes into `to` (a new volume of that size, all zeros),
// then answers RESULT {bytes} once they are written. Any failure is answered on the stream too.
export async function receiveStream (attached: Promise<StreamConnection>, to: FileHandle, size: number, ctx: JobContext, ranges: DataRanges): Promise<void> {
  const conn = await withCancel(attached, ctx.signal)
  const cancel = () => conn.socket.destroy()
  ctx.signal.addEventListener('abort', cancel, { once: true })
  try {
    let received = 0
    let next = 0
    let ended = false
    let lastShown = 0
    const writes = new WriteWindow()
    for await (const frame of conn.frames()) {
      if (frame.type === END) {
        if (frame.offset !== size) throw SOURCE_CHANGED(`the upload ended at ${frame.offset} bytes, not the ${size} announced`)
        ended = true
        break
      }
      if (frame.type !== DATA) throw PROTOCOL_ERROR('an upload carries only DATA and END frames')
      // In order and never overlapping: writes in flight together must not touch the same bytes.
      if (frame.offset < next) throw PROTOCOL_ERROR(`an upload's frames go forward: one at byte ${frame.offset} came after byte ${next}`)
      if (frame.offset + frame.payload.length > size) throw SOURCE_CHANGED(`the upload wrote past its announced size (${size} bytes)`)
      next = frame.offset + frame.payload.length
      ranges.add(frame.offset, next)
      await writes.add(writeAt(to, frame.payload, frame.offset))
      received += frame.payload.length
      // Progress by position: the caller sends in order, skipping holes.
      const at = frame.offset + frame.payload.length
      if (at - lastShown >= 64 * MAX_STREAM_DATA) { ctx.progress('upload', at, size); lastShown = at }
    }
    await writes.drain()
    if (ctx.signal.aborted) throw JOB_CANCELLED()
    if (!ended) throw SOURCE_CHANGED('the upload closed before its end')
    await to.sync()
    ctx.progress('upload', size, size)
    await sendResult(conn.socket, { result: { bytes: received } }).catch(() => {})
    conn.socket.end()
  } catch (err) {
    throw await failStream(conn, ctx, err)
  } finally {
    ctx.signal.removeEventListener('abort', cancel)
  }
}

// Sends `from` whole (its non-zero blocks, then END with its size); returns the size.
export async function sendStream (attached: Promise<StreamConnection>, from: FileHandle, ctx: JobContext): Promise<number> {
  const conn = await withCancel(attached, ctx.signal)
  const cancel = () => conn.socket.destroy()
  ctx.signal.addEventListener('abort', cancel, { once: true })
  // The caller's closing early is a failure of this job, not a crash of the daemon.
  conn.socket.on('error', () => {})
  try {
    const { size } = await from.stat()
    for (let pos = 0; pos < size;) {
      if (conn.socket.destroyed) throw ctx.signal.aborted ? JOB_CANCELLED() : IO_ERROR('the caller closed the download')
      // A fresh buffer each time: the socket holds on to what it was given until it is sent.
      const chunk = Buffer.allocUnsafe(Math.min(MAX_STREAM_DATA, size - pos))
      let got = 0
      while (got < chunk.length) {
        const { bytesRead } = await from.read(chunk, got, chunk.length - got, pos + got)
        if (bytesRead === 0) throw SOURCE_CHANGED(`the image ended at byte ${pos + got} of ${size}`)
        got += bytesRead
      }
      for (const [a, b] of nonZeroRuns(chunk, got)) await sendFrame(conn.socket, DATA, pos + a, chunk.subarray(a, b))
      pos += got
      ctx.progress('download', pos, size)
    }
    await sendFrame(conn.socket, END, size)
    conn.socket.end()
    return size
  } catch (err) {
    throw await failStream(conn, ctx, err)
  } finally {
    ctx.signal.removeEventListener('abort', cancel)
  }
}

// Tells the other end why the stream failed (if it still listens) and gives the job's error.
async function failStream (conn: StreamConnection, ctx: JobContext, err: unknown): Promise<OsfarmError> {
  const e = ctx.signal.aborted ? JOB_CANCELLED() : OsfarmError.from(err)
  if (!conn.socket.destroyed) await sendResult(conn.socket, { error: { code: e.code, message: e.text } }).catch(() => {})
  conn.socket.end()
  return e
}

async function writeAt (fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off).catch(err => {
      if (err.code === 'ENOSPC') throw STORE_FULL('no space left in the store for the upload')
      throw err
    })
    off += bytesWritten
  }
}

function withCancel<T> (p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(JOB_CANCELLED())
  return new Promise((resolve, reject) => {
    const abort = () => reject(JOB_CANCELLED())
    signal.addEventListener('abort', abort, { once: true })
    p.then(v => { signal.removeEventListener('abort', abort); resolve(v) }, err => { signal.removeEventListener('abort', abort); reject(err) })
  })
}
