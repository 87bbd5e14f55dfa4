// Worker thread of the BlockHasher: reads a byte range of a file in large chunks and returns one
// hash slot per block (all zeros for a zero block). Reads are synchronous: this thread does
// nothing else, and it keeps the hot loop free of promises.

import fs from 'node:fs'
import { parentPort } from 'node:worker_threads'
import { hashInto } from './hash.js'

export interface HashTask {
  id: number
  path: string
  blockSize: number
  // Byte range to hash; `start` is block-aligned, `end` is a block boundary or the file's end.
  start: number
  end: number
}

export interface HashReply {
  id: number
  // One 32-byte slot per block of the range; transferred, not copied.
  hashes?: ArrayBuffer
  error?: { message: string, code?: string }
}

const HASH_BYTES = 32
const CHUNK_BYTES = 1 << 20

let chunk = Buffer.alloc(CHUNK_BYTES)
let zero = Buffer.alloc(4096)

function hashRange (task: HashTask): ArrayBuffer {
  const { blockSize, start, end } = task
  if (chunk.length % blockSize !== 0) chunk = Buffer.alloc(Math.max(CHUNK_BYTES, blockSize))
  if (zero.length !== blockSize) zero = Buffer.alloc(blockSize)
  const table = new ArrayBuffer(Math.ceil((end - start) / blockSize) * HASH_BYTES)
  const out = Buffer.from(table)
  const fd = fs.openSync(task.path, 'r')
  try {
    let pos = start
    let slot = 0
    while (pos < end) {
      const want = Math.min(chunk.length, end - pos)
      let got = 0
      while (got < want) {
        const n = fs.readSync(fd, chunk, got, want - got, pos + got)
        if (n === 0) throw Object.assign(new Error(`file ended at ${pos + got}, expected ${end}`), { code: 'ESHORT' })
        got += n
      }
      for (let o = 0; o < got; o += blockSize, slot++) {
        const len = Math.min(blockSize, got - o)
        const isZero = len === blockSize
          ? chunk.compare(zero, 0, blockSize, o, o + blockSize) === 0
          : chunk.subarray(o, o + len).every(b => b === 0)
        if (!isZero) hashInto(chunk.subarray(o, o + len), out, slot * HASH_BYTES)
      }
      pos += got
    }
  } finally {
    fs.closeSync(fd)
  }
  return table
}

parentPort?.on('message', (task: HashTask) => {
  let reply: HashReply
  try {
    reply = { id: task.id, hashes: hashRange(task) }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    reply = { id: task.id, error: { message: e.message, code: e.code } }
  }
  parentPort!.postMessage(reply, reply.hashes ? [reply.hashes] : [])
})
