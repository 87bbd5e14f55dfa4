// Byte streams over the local API, for callers osfarmd opens no host path for (see README, "Who
// may do what"): an image upload or download, a spec's source file. A call such as
// `image.upload` answers with a one-time token; the caller opens a second connection to the same
// socket, sends one JSON-RPC frame `stream.attach {token}`, reads its answer, and from then on
// the connection carries binary frames, not JSON lines:
//
//   header (16 bytes): type u8, 3 zero bytes, payload length u32 BE, offset u64 BE
//   DATA    bytes of the stream at `offset`; ranges never sent are zeros (holes stay holes)
//   END     the stream is complete; `offset` is its total size
//   RESULT  from the receiving side, last: a JSON payload {result} or {error: {code, message}}
//
// An upload goes DATA… END from the caller, then RESULT from osfarmd; a download goes DATA… END
// (or RESULT with an error) from osfarmd.

import { IO_ERROR, OsfarmError, PROTOCOL_ERROR, isErrorCode } from './errors.js'

export const FRAME_HEADER_BYTES = 16
// Large enough that framing costs nothing, small enough to bound what a receiver buffers.
export const MAX_STREAM_DATA = 4 << 20
export const MAX_RESULT_BYTES = 64 << 10
// The zero-run granularity: runs of zero blocks this size are not sent.
export const STREAM_BLOCK = 4096

export const DATA = 1
export const END = 2
export const RESULT = 3

export interface Frame {
  type: number
  offset: number
  payload: Buffer
}

const TWO_32 = 2 ** 32

export function frameHeader (type: number, offset: number, length: number): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_BYTES)
  h[0] = type
  h.writeUInt32BE(length, 4)
  h.writeUInt32BE(Math.floor(offset / TWO_32), 8)
  h.writeUInt32BE(offset >>> 0, 12)
  return h
}

// A writable end: a net.Socket, or stdout.
export interface Sink {
  write (chunk: Uint8Array): boolean
  once (event: 'drain' | 'close' | 'error', fn: () => void): unknown
  off? (event: 'drain' | 'close' | 'error', fn: () => void): unknown
  destroyed?: boolean
}

// Writes one frame, waiting for the sink to drain when it is backed up.
export async function sendFrame (sink: Sink, type: number, offset: number, payload?: Buffer): Promise<void> {
  const header = frameHeader(type, offset, payload?.length ?? 0)
  sink.write(header)
  if (payload?.length ? !sink.write(payload) : false) await drained(sink)
}

export function sendResult (sink: Sink, body: { result: unknown } | { error: { code: string, message: string } }): Promise<void> {
  return sendFrame(sink, RESULT, 0, Buffer.from(JSON.stringify(body)))
}

export function drained (sink: Sink): Promise<void> {
  if (sink.destroyed) return Promise.reject(IO_ERROR('the stream closed'))
  return new Promise((resolve, reject) => {
    const done = () => { sink.off?.('close', gone); resolve() }
    const gone = () => { sink.off?.('drain', done); reject(IO_ERROR('the stream closed')) }
    sink.once('drain', done)
    sink.once('close', gone)
  })
}

// Frames from an async source of chunks (a socket). A frame's payload is a copy only when it
// spans chunks. Refuses a frame over the caps before buffering it.
export async function * readFrames (source: AsyncIterable<Buffer>, first?: Buffer): AsyncGenerator<Frame> {
  const parts: Buffer[] = first?.length ? [first] : []
  let have = first?.length ?? 0
  const take = (n: number): Buffer => {
    if (parts[0]!.length >= n) {
      const head = parts[0]!
      const out = head.subarray(0, n)
      if (head.length === n) parts.shift()
      else parts[0] = head.subarray(n)
      have -= n
      return out
    }
    const out = Buffer.allocUnsafe(n)
    let o = 0
    while (o < n) {
      const head = parts[0]!
      const k = Math.min(head.length, n - o)
      head.copy(out, o, 0, k)
      o += k
      if (k === head.length) parts.shift()
      else parts[0] = head.subarray(k)
    }
    have -= n
    return out
  }
  let header: { type: number, length: number, offset: number } | undefined
  const iterator = source[Symbol.asyncIterator]()
  for (;;) {
    if (!header && have >= FRAME_HEADER_BYTES) {
      const h = take(FRAME_HEADER_BYTES)
      const type = h[0]!
      const length = h.readUInt32BE(4)
      const offset = h.readUInt32BE(8) * TWO_32 + h.readUInt32BE(12)
      if (type !== DATA && type !== END && type !== RESULT) throw PROTOCOL_ERROR(`unknown stream frame type ${type}`)
      if (length > (type === RESULT ? MAX_RESULT_BYTES : MAX_STREAM_DATA)) throw PROTOCOL_ERROR(`stream frame of ${length} bytes is over the limit`)
      if (!Number.isSafeInteger(offset)) throw PROTOCOL_ERROR('stream offset out of range')
      header = { type, length, offset }
    }
    if (header && have >= header.length) {
      const payload = header.length ? take(header.length) : Buffer.alloc(0)
      const frame = { type: header.type, offset: header.offset, payload }
      header = undefined
      yield frame
      continue
    }
    const next = await iterator.next()
    if (next.done) {
      if (have || header) throw IO_ERROR('the stream ended inside a frame')
      return
    }
    parts.push(next.value)
    have += next.value.length
  }
}

// The RESULT payload as a value, or the error it carries.
export function parseResult (payload: Buffer): unknown {
  let body: { result?: unknown, error?: { code?: unknown, message?: unknown } }
  try {
    body = JSON.parse(payload.toString('utf8'))
  } catch {
    throw PROTOCOL_ERROR('the stream result is not JSON')
  }
  if (body.error) {
    const code = isErrorCode(body.error.code) ? body.error.code : 'INTERNAL'
    throw new OsfarmError(code, String(body.error.message ?? code))
  }
  return body.result
}

// The non-zero runs of a chunk, at block granularity: [start, end) offsets within it.
export function nonZeroRuns (chunk: Buffer, length: number, block = STREAM_BLOCK): Array<[number, number]> {
  const zero = zeroBlock(block)
  const runs: Array<[number, number]> = []
  let runStart = -1
  for (let o = 0; o < length; o += block) {
    const end = Math.min(o + block, length)
    const nonZero = chunk.compare(zero, 0, end - o, o, end) !== 0
    if (nonZero && runStart < 0) runStart = o
    if (!nonZero && runStart >= 0) { runs.push([runStart, o]); runStart = -1 }
  }
  if (runStart >= 0) runs.push([runStart, length])
  return runs
}

let zeros: Buffer | undefined
function zeroBlock (size: number): Buffer {
  if (!zeros || zeros.length < size) zeros = Buffer.alloc(size)
  return zeros
}

// Writes of received frames kept in flight together (positional writes are independent), so the
// socket is read while earlier frames are still being written. At most `max` at once; the first
// failure is thrown by the next add() or by drain().
export class WriteWindow {
  readonly #max: number
  readonly #inflight = new Set<Promise<void>>()
  #failure: unknown

  constructor (max = 8) {
    this.#max = max
  }

  async add (write: Promise<unknown>): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure
    const p: Promise<void> = write.then(() => { this.#inflight.delete(p) }, err => { this.#inflight.delete(p); this.#failure ??= err })
    this.#inflight.add(p)
    if (this.#inflight.size >= this.#max) await Promise.race(this.#inflight)
    if (this.#failure !== undefined) throw this.#failure
  }

  async drain (): Promise<void> {
    await Promise.all(this.#inflight)
    if (this.#failure !== undefined) throw this.#failure
  }
}
