// Worker thread of the BlockHasher: reads a byte range of a file in large chunks and writes one
// hash slot per block into the shared hash table (zero blocks are left all zeros). Reads are
// synchronous: this thread does nothing else, and it keeps the hot loop free of promises.

import fs from 'node:fs'
import { parentPort } from 'node:worker_threads'
import { hashInto } from './hash.js'

export interface HashTask {
  id: number
  path: string
  // The manifest's hash table, shared with the main thread: slots are written in place.
  table: SharedArrayBuffer
  blockSize: number
  // Byte range to hash; `start` is block-aligned, `end` is a block boundary or the file's end.
  start: number
  end: number
}

export interface HashReply {
  id: number
  error?: { message: string, code?: string }
}

const HASH_BYTES = 32
const CHUNK_BYTES = 1 << 20

let chunk = Buffer.alloc(CHUNK_BYTES)
let zero = Buffer.alloc(4096)

function hashRange (task: HashTask): void {
  const { blockSize, start, end } = task
  if (chunk.length % blockSize !== 0) chunk = Buffer.alloc(Math.max(CHUNK_BYTES, blockSize))
  if (zero.length !== blockSize) zero = Buffer.alloc(blockSize)
  const out = Buffer.from(task.table)
  const fd = fs.openSync(task.path, 'r')
  try {
    let pos = start
    let slot = start / blockSize
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
}

parentPort?.on('message', (task: HashTask) => {
  let reply: HashReply
  try {
    hashRange(task)
    reply = { id: task.id }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    reply = { id: task.id, error: { message: e.message, code: e.code } }
  }
  parentPort!.postMessage(reply)
})
