// Worker thread of the BlockPool: zstd for block responses (packing on the serving side;
// unpacking on the receiving side, each block checked against the hash it was asked by and,
// for a fetch, written to its target here, so received data never crosses to the main thread).
// Reads and writes are synchronous: this thread does nothing else.

import fs from 'node:fs'
import { createRequire } from 'node:module'
import { parentPort } from 'node:worker_threads'
import { hashInto, HASH_BYTES } from './hash.js'

const require = createRequire(import.meta.url)
interface ZstdBinding {
  CCtx: new () => { compress (dst: Uint8Array, src: Uint8Array, level: number): number }
  DCtx: new () => { decompress (dst: Uint8Array, src: Uint8Array): number }
  compressBound (n: number): number
}
const zstd = require('zstd-napi/binding') as ZstdBinding

// Pack the blocks in `data`, or read them first from `reads` (ranges of files, in output order):
// served blocks then never cross to the main thread raw. `level` 0: not compressed.
export interface PackTask { id: number, op: 'pack', data?: Uint8Array, reads?: ReadRun[], level: number, minSaving: number }
export interface ReadRun { path: string, pos: number, len: number }
// `into`: the file to write each valid block to, at the byte offsets at[j] (block j of the
// request); the blocks are then not sent back.
export interface UnpackTask { id: number, op: 'unpack', zstd: boolean, data: Uint8Array, raw: number, sizes: number[], hashes: Uint8Array, into?: BlockTarget }
export interface BlockTarget { path: string, at: number[][] }
export type BlockTask = PackTask | UnpackTask

export interface BlockReply {
  id: number
  // pack: the payload to send and whether it is compressed; unpack: the raw blocks back to back
  // (none when they were written `into` a file).
  data?: Uint8Array
  compressed?: boolean
  // pack: milliseconds the compression took on this thread (0: none was tried).
  packMs?: number
  // unpack: 1 where block j (of non-zero size) matches hash j of the request.
  valid?: Uint8Array
  error?: string
  // The error is this host's (a read or write failed), not the payload's.
  io?: boolean
}

let cctx: InstanceType<ZstdBinding['CCtx']> | undefined
let dctx: InstanceType<ZstdBinding['DCtx']> | undefined
const digest = Buffer.alloc(HASH_BYTES)
// Scratch buffers, reused: what goes back to the main thread is copied out at its exact size.
const scratch = { read: Buffer.alloc(0), packed: Buffer.alloc(0), unpacked: Buffer.alloc(0) }

function scratchOf (name: keyof typeof scratch, n: number): Buffer {
  if (scratch[name].length < n) scratch[name] = Buffer.allocUnsafeSlow(n)
  return scratch[name]
}

// An unpooled copy, movable to the main thread.
function copyOut (b: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(b.byteLength)
  out.set(b)
  return out
}

function pack (t: PackTask): BlockReply {
  let input: Buffer
  if (t.data) {
    input = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  } else {
    try {
      input = readRuns(t.reads ?? [])
    } catch (err) {
      return { id: t.id, error: `reading blocks: ${(err as Error).message}`, io: true }
    }
  }
  let packMs = 0
  if (t.level && input.length) {
    cctx ??= new zstd.CCtx()
    const out = scratchOf('packed', zstd.compressBound(input.length))
    const t0 = performance.now()
    const n = cctx.compress(out, input, t.level)
    packMs = performance.now() - t0
    if (n <= input.length * (1 - t.minSaving)) return { id: t.id, data: copyOut(out.subarray(0, n)), compressed: true, packMs }
  }
  return { id: t.id, data: t.data ?? copyOut(input), compressed: false, packMs }
}

function readRuns (runs: ReadRun[]): Buffer {
  let total = 0
  for (const r of runs) total += r.len
  const buf = scratchOf('read', total).subarray(0, total)
  const fds = new Map<string, number>()
  try {
    let out = 0
    for (const r of runs) {
      let fd = fds.get(r.path)
      if (fd === undefined) fds.set(r.path, fd = fs.openSync(r.path, 'r'))
      for (let got = 0; got < r.len;) {
        const n = fs.readSync(fd, buf, out + got, r.len - got, r.pos + got)
        if (n === 0) throw new Error(`short read of ${r.path}`)
        got += n
      }
      out += r.len
    }
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd)
  }
  return buf
}

function unpack (t: UnpackTask): BlockReply {
  let data = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  if (t.zstd) {
    dctx ??= new zstd.DCtx()
    // Blocks written here need no buffer of their own.
    const out = t.into ? scratchOf('unpacked', t.raw).subarray(0, t.raw) : Buffer.allocUnsafeSlow(t.raw)
    let n: number
    try { n = dctx.decompress(out, data) } catch (err) { return { id: t.id, error: `bad zstd data: ${(err as Error).message}` } }
    if (n !== t.raw) return { id: t.id, error: 'decompressed size does not match' }
    data = out
  } else if (data.length !== t.raw) {
    return { id: t.id, error: 'sizes do not add up' }
  }
  const hashes = Buffer.from(t.hashes.buffer, t.hashes.byteOffset, t.hashes.byteLength)
  const valid = new Uint8Array(t.sizes.length)
  for (let j = 0, off = 0; j < t.sizes.length; j++) {
    const size = t.sizes[j]!
    if (!size) continue
    hashInto(data.subarray(off, off + size), digest, 0)
    valid[j] = digest.compare(hashes, j * HASH_BYTES, (j + 1) * HASH_BYTES) === 0 ? 1 : 0
    off += size
  }
  if (!t.into) return { id: t.id, data, valid }
  try {
    write(t.into, data, t.sizes, valid)
  } catch (err) {
    return { id: t.id, error: `writing ${t.into.path}: ${(err as Error).message}`, io: true }
  }
  return { id: t.id, valid }
}

// Writes the valid blocks of `data` where `into` says, one writev per run of adjacent offsets.
function write (into: BlockTarget, data: Buffer, sizes: number[], valid: Uint8Array): void {
  const pieces: Array<[number, Buffer]> = []
  for (let j = 0, off = 0; j < sizes.length; off += sizes[j]!, j++) {
    if (!valid[j]) continue
    const block = data.subarray(off, off + sizes[j]!)
    for (const pos of into.at[j] ?? []) pieces.push([pos, block])
  }
  pieces.sort((a, b) => a[0] - b[0])
  const fd = fs.openSync(into.path, 'r+')
  try {
    for (let k = 0; k < pieces.length;) {
      const pos = pieces[k]![0]
      const run = [pieces[k]![1]]
      let end = pos + run[0]!.length
      while (++k < pieces.length && pieces[k]![0] === end && run.length < 1024) {
        run.push(pieces[k]![1])
        end += pieces[k]![1].length
      }
      writeAll(fd, run, pos)
    }
  } finally {
    fs.closeSync(fd)
  }
}

function writeAll (fd: number, bufs: Buffer[], pos: number): void {
  const n = fs.writevSync(fd, bufs, pos)
  let rest = n < bufs.reduce((sum, b) => sum + b.length, 0) ? Buffer.concat(bufs).subarray(n) : undefined
  // A short write (rare): the rest plainly.
  for (let at = pos + n; rest?.length;) {
    const m = fs.writeSync(fd, rest, 0, rest.length, at)
    rest = rest.subarray(m)
    at += m
  }
}

parentPort?.on('message', (t: BlockTask) => {
  let reply: BlockReply
  try {
    reply = t.op === 'pack' ? pack(t) : unpack(t)
  } catch (err) {
    reply = { id: t.id, error: (err as Error).message }
  }
  // Every payload here is this thread's own (made unpooled here, or moved or copied in).
  parentPort!.postMessage(reply, reply.data ? [reply.data.buffer as ArrayBuffer] : [])
})
