// The CPU floor for bench:cpu: the cheapest path this machine has for moving a list of blocks
// of an image from one lab host to another, one thread per end. The sender reads the blocks,
// packs them in batches of 64, optionally zstd level 1, and writes them to a kernel TCP socket,
// optionally inside @hyperswarm/secret-stream (the Noise XX handshake and libsodium
// secretstream that osfarm's connections use), framed as u32 length + payload. The receiver
// undoes each layer, optionally checks each block against its BLAKE3 hash (the project's hash
// module) and pwrites it at its offset into a sparse file, synced at the end.
//
//   node dist/scripts/bench/cpu-floor.js recv --listen HOST:PORT --list FILE [--crypto] [--zstd] [--hash] [--out FILE --size BYTES]
//   node dist/scripts/bench/cpu-floor.js send --connect HOST:PORT --list FILE --image FILE [--crypto] [--zstd]
//
// --list: the blocks, in order, as records of u32le block index + 32-byte BLAKE3 hash. --out:
// the receiver writes the blocks there (without it, it only counts them). The receiver prints
// "ready" once it listens; each role prints one JSON line: its CPU seconds (user, sys) from the
// connection to its end (the receiver its wall seconds too, the sender its whole process's
// CPU seconds) and its peak RSS.

import fs from 'node:fs'
import net from 'node:net'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import type { Duplex } from 'node:stream'
import { hashInto, HASH_BYTES } from '../../daemon/blocks/hash.js'

const BLOCK = 4096
const BATCH = 64
const RECORD = 4 + HASH_BYTES

const require = createRequire(import.meta.url)
interface ZstdBinding {
  CCtx: new () => { compress (dst: Uint8Array, src: Uint8Array, level: number): number }
  DCtx: new () => { decompress (dst: Uint8Array, src: Uint8Array): number }
  compressBound (n: number): number
}
// The binding the daemon's block workers use, with reused buffers: nothing allocated per batch.
const zstd = require('zstd-napi/binding') as ZstdBinding
type SecretStream = new (isInitiator: boolean, raw: net.Socket, opts: { keyPair: unknown }) => Duplex

const { positionals, values: opt } = parseArgs({
  allowPositionals: true,
  options: {
    listen: { type: 'string' },
    connect: { type: 'string' },
    list: { type: 'string' },
    image: { type: 'string' },
    out: { type: 'string' },
    size: { type: 'string' },
    crypto: { type: 'boolean', default: false },
    zstd: { type: 'boolean', default: false },
    hash: { type: 'boolean', default: false }
  }
})
const role = positionals[0]
const list = opt.list ? fs.readFileSync(opt.list) : Buffer.alloc(0)
if ((role !== 'send' && role !== 'recv') || !opt.list || (role === 'send' ? !opt.connect || !opt.image : !opt.listen)) {
  console.error('usage: cpu-floor.js recv --listen HOST:PORT --list FILE [--crypto] [--zstd] [--hash] [--out FILE --size BYTES] | send --connect HOST:PORT --list FILE --image FILE [--crypto] [--zstd]')
  process.exit(2)
}
const count = list.length / RECORD
const indexOf = (k: number): number => list.readUInt32LE(k * RECORD)

// Loaded before the clock starts: only the transfer's work is counted.
const keyPair = opt.crypto ? (await import('hyperdht')).default.keyPair() : undefined
const NoiseSecretStream = opt.crypto ? require('@hyperswarm/secret-stream') as SecretStream : undefined

function hostPort (s: string): [string, number] {
  const i = s.lastIndexOf(':')
  return [s.slice(0, i), Number(s.slice(i + 1))]
}

function cpuSince (c0: NodeJS.CpuUsage): { user: number, sys: number } {
  const c = process.cpuUsage(c0)
  return { user: c.user / 1e6, sys: c.system / 1e6 }
}

// Runs of adjacent blocks among records [k, end): [first record, run length] pairs.
function runs (k: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let j = k; j < end;) {
    let n = 1
    while (j + n < end && indexOf(j + n) === indexOf(j) + n) n++
    out.push([j, n])
    j += n
  }
  return out
}

function send (): void {
  const fd = fs.openSync(opt.image!, 'r')
  const cctx = opt.zstd ? new zstd.CCtx() : undefined
  const raw = Buffer.allocUnsafeSlow(BATCH * BLOCK)
  const bound = zstd.compressBound(raw.length)
  const [host, port] = hostPort(opt.connect!)
  const sock = net.connect(port, host)
  let c0: NodeJS.CpuUsage
  let k = 0
  let bytes = 0
  let frames = 0

  // The next batch as a frame (u32le payload length, then the blocks raw or zstd-packed), if any.
  const frame = (): Buffer | undefined => {
    if (k >= count) return undefined
    const end = Math.min(count, k + BATCH)
    const n = end - k
    const out = Buffer.allocUnsafe(4 + (cctx ? bound : n * BLOCK))
    const into = cctx ? raw : out.subarray(4)
    for (const [j, len] of runs(k, end)) {
      const at = (j - k) * BLOCK
      const want = len * BLOCK
      for (let got = 0; got < want;) {
        const r = fs.readSync(fd, into, at + got, want - got, indexOf(j) * BLOCK + got)
        if (r === 0) throw new Error(`short read of ${opt.image} at block ${indexOf(j)}`)
        got += r
      }
    }
    const len = cctx ? cctx.compress(out.subarray(4), raw.subarray(0, n * BLOCK), 1) : n * BLOCK
    out.writeUInt32LE(len, 0)
    k = end
    frames++
    bytes += 4 + len
    return out.subarray(0, 4 + len)
  }

  let done = false
  const finish = (): void => {
    if (done) return
    done = true
    const all = process.cpuUsage()
    console.log(JSON.stringify({ role, ...cpuSince(c0), processCpu: (all.user + all.system) / 1e6, frames, bytes, blocks: count, maxRssMiB: process.resourceUsage().maxRSS / 1024 }))
    process.exit(0)
  }

  sock.once('connect', () => {
    c0 = process.cpuUsage()
    const out: Duplex = NoiseSecretStream ? new NoiseSecretStream(true, sock, { keyPair }) : sock
    out.on('error', (err: Error) => { if (!done) { console.error(err.message); process.exit(1) } })
    const pump = (): void => {
      for (let f = frame(); f; f = frame()) {
        if (!out.write(f)) { out.once('drain', pump); return }
      }
      out.end()
    }
    pump()
  })
  // The receiver closes its side once it has every block written and synced (a plain socket
  // must flow for its end to be seen).
  sock.once('end', finish)
  if (!NoiseSecretStream) sock.resume()
  sock.once('close', finish)
  sock.on('error', (err: Error) => { if (!done) { console.error(err.message); process.exit(1) } })
}

function recv (): void {
  const dctx = opt.zstd ? new zstd.DCtx() : undefined
  const unpacked = Buffer.allocUnsafeSlow(BATCH * BLOCK)
  const digest = Buffer.alloc(HASH_BYTES)
  let fd: number | undefined
  if (opt.out) {
    fd = fs.openSync(opt.out, 'w')
    fs.ftruncateSync(fd, Number(opt.size ?? 0))
  }
  let k = 0
  let bad = 0
  let bytes = 0

  const batch = (payload: Buffer): void => {
    const end = Math.min(count, k + BATCH)
    const n = end - k
    let data = payload
    if (dctx) {
      data = unpacked.subarray(0, n * BLOCK)
      if (dctx.decompress(data, payload) !== n * BLOCK) throw new Error('a batch decompressed to the wrong size')
    } else if (payload.length !== n * BLOCK) {
      throw new Error('a batch of the wrong size')
    }
    if (opt.hash) {
      for (let j = 0; j < n; j++) {
        hashInto(data.subarray(j * BLOCK, (j + 1) * BLOCK), digest, 0)
        if (digest.compare(list, (k + j) * RECORD + 4, (k + j + 1) * RECORD) !== 0) bad++
      }
    }
    if (fd !== undefined) {
      for (const [j, len] of runs(k, end)) {
        const piece = data.subarray((j - k) * BLOCK, (j - k + len) * BLOCK)
        for (let put = 0; put < piece.length;) put += fs.writeSync(fd, piece, put, piece.length - put, indexOf(j) * BLOCK + put)
      }
    }
    k = end
  }

  const [host, port] = hostPort(opt.listen!)
  const server = net.createServer(sock => {
    server.close()
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    const input: Duplex = NoiseSecretStream ? new NoiseSecretStream(false, sock, { keyPair }) : sock
    // Frame parsing: a frame whole inside one chunk is used in place, else gathered.
    let partial: Buffer | undefined
    let have = 0
    let header = Buffer.alloc(0)
    input.on('data', (chunk: Buffer) => {
      bytes += chunk.length
      let off = 0
      while (off < chunk.length) {
        if (partial) {
          const n = Math.min(partial.length - have, chunk.length - off)
          chunk.copy(partial, have, off, off + n)
          have += n
          off += n
          if (have === partial.length) { const p = partial; partial = undefined; batch(p) }
          continue
        }
        if (header.length < 4) {
          const n = Math.min(4 - header.length, chunk.length - off)
          header = Buffer.concat([header, chunk.subarray(off, off + n)])
          off += n
          if (header.length < 4) break
        }
        const len = header.readUInt32LE(0)
        header = Buffer.alloc(0)
        if (chunk.length - off >= len) {
          batch(chunk.subarray(off, off + len))
          off += len
        } else {
          partial = Buffer.allocUnsafe(len)
          have = 0
        }
      }
      if (k < count) return
      if (fd !== undefined) { fs.fdatasyncSync(fd); fs.closeSync(fd) }
      const seconds = (performance.now() - t0) / 1000
      console.log(JSON.stringify({ role, ...cpuSince(c0), seconds, blocks: k, bad, bytes, maxRssMiB: process.resourceUsage().maxRSS / 1024 }))
      sock.end()
      sock.once('close', () => process.exit(0))
    })
    input.on('error', (err: Error) => { if (k < count) { console.error(err.message); process.exit(1) } })
  })
  server.listen(port, host, () => console.log('ready'))
  // The bench ends a run; give up if it never does.
  setTimeout(() => { console.error(`timed out with ${k} of ${count} blocks`); process.exit(1) }, 600_000).unref()
}

if (role === 'send') send()
else recv()
