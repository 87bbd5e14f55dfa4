// Worker thread of the BlockPool: zstd for block responses (packing on the serving side;
// unpacking on the receiving side, each block checked against the hash it was asked by), and
// reading blocks back from a file to check them against a manifest. Reads are synchronous:
// this thread does nothing else.

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

const READ_BYTES = 1 << 20

export interface PackTask { id: number, op: 'pack', data: Uint8Array, level: number, minSaving: number }
export interface UnpackTask { id: number, op: 'unpack', zstd: boolean, data: Uint8Array, raw: number, sizes: number[], hashes: Uint8Array }
// Blocks [runs[2k], runs[2k] + runs[2k+1]) of `path`, checked against `hashes` (one per block,
// in run order); `size` is the file's length (the last block may be short).
export interface VerifyTask { id: number, op: 'verify', path: string, blockSize: number, size: number, runs: Uint32Array, hashes: Uint8Array }
export type BlockTask = PackTask | UnpackTask | VerifyTask

export interface BlockReply {
  id: number
  // pack: the payload to send and whether it is compressed; unpack: the raw blocks back to back.
  data?: Uint8Array
  compressed?: boolean
  // unpack: 1 where block j (of non-zero size) matches hash j of the request.
  valid?: Uint8Array
  // verify: indices of blocks that do not match (or could not be read whole).
  bad?: number[]
  error?: string
}

let cctx: InstanceType<ZstdBinding['CCtx']> | undefined
let dctx: InstanceType<ZstdBinding['DCtx']> | undefined
const digest = Buffer.alloc(HASH_BYTES)
let readBuf: Buffer | undefined

function pack (t: PackTask): BlockReply {
  cctx ??= new zstd.CCtx()
  const out = Buffer.allocUnsafeSlow(zstd.compressBound(t.data.length))
  const n = cctx.compress(out, t.data, t.level)
  if (n <= t.data.length * (1 - t.minSaving)) return { id: t.id, data: out.subarray(0, n), compressed: true }
  return { id: t.id, data: t.data, compressed: false }
}

function unpack (t: UnpackTask): BlockReply {
  let data = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  if (t.zstd) {
    dctx ??= new zstd.DCtx()
    const out = Buffer.allocUnsafeSlow(t.raw)
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
  return { id: t.id, data, valid }
}

function verify (t: VerifyTask): BlockReply {
  const bs = t.blockSize
  const per = Math.max(1, Math.floor(READ_BYTES / bs))
  if (!readBuf || readBuf.length < per * bs) readBuf = Buffer.allocUnsafeSlow(per * bs)
  const hashes = Buffer.from(t.hashes.buffer, t.hashes.byteOffset, t.hashes.byteLength)
  const bad: number[] = []
  const fd = fs.openSync(t.path, 'r')
  try {
    let slot = 0
    for (let k = 0; k < t.runs.length; k += 2) {
      const end = t.runs[k]! + t.runs[k + 1]!
      for (let first = t.runs[k]!; first < end;) {
        const n = Math.min(per, end - first)
        const len = Math.min(n * bs, t.size - first * bs)
        let got = 0
        while (got < len) {
          const r = fs.readSync(fd, readBuf, got, len - got, first * bs + got)
          if (r === 0) break
          got += r
        }
        for (let j = 0; j < n; j++, slot++) {
          const o = j * bs
          const blen = Math.min(bs, t.size - (first + j) * bs)
          if (o + blen > got) { bad.push(first + j); continue }
          hashInto(readBuf.subarray(o, o + blen), digest, 0)
          if (digest.compare(hashes, slot * HASH_BYTES, (slot + 1) * HASH_BYTES) !== 0) bad.push(first + j)
        }
        first += n
      }
    }
  } finally {
    fs.closeSync(fd)
  }
  return { id: t.id, bad }
}

parentPort?.on('message', (t: BlockTask) => {
  let reply: BlockReply
  try {
    reply = t.op === 'pack' ? pack(t) : t.op === 'unpack' ? unpack(t) : verify(t)
  } catch (err) {
    reply = { id: t.id, error: (err as Error).message }
  }
  // Every payload here is this thread's own (made unpooled here, or moved or copied in).
  parentPort!.postMessage(reply, reply.data ? [reply.data.buffer as ArrayBuffer] : [])
})
