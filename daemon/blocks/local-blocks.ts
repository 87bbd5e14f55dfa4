// Which local volume holds a block, in memory: the hot-path view of the catalog's locator, for
// planning fetches and serving peers (a level lookup per hash is too slow at 1 Gbit). Filled from
// the catalog at start, from registrations, and block by block from fetches in progress, so a
// host part-way through a fetch serves what it has. Says where a batch's blocks are, as
// coalesced file ranges (read and packed on a block-pool worker).

import fs from 'node:fs/promises'
import { HASH_BYTES } from '../blocks/hash.js'
import { blockCount, blockLength, encodeManifest, zeroSlots, type Manifest } from '../blocks/manifest.js'
import { HashIndex } from '../blocks/hash-index.js'
import { encodeManifestDelta, type DeltaVersion } from '../blocks/manifest-delta.js'
import type { BlockBatch, BlockPlaces } from '../fleet/session-host.js'

// An idle file handle is closed after this long.
const HANDLE_IDLE_MS = 10_000
const VOLUME_SHIFT = 2 ** 32
// Manifest deltas kept while a peer reads them in chunks.
const DELTA_CACHE = 4

interface Volume {
  id: number
  key: string
  path: string
  manifest: Manifest
  complete: boolean
  // Per block: 1 once it is servable from here, 2 for a zero block (never served).
  blocks: Uint8Array
  handle?: Promise<fs.FileHandle>
  lastUse: number
}

export interface Location {
  volume: string
  path: string
  index: number
  length: number
}

export class LocalBlocks {
  // Hash → volume id × 2^32 + block index, of the first volume that served it.
  #where = new HashIndex(packed => {
    const v = this.#volumes.get(Math.floor(packed / VOLUME_SHIFT))!
    return { buf: v.manifest.hashes, offset: (packed % VOLUME_SHIFT) * HASH_BYTES }
  })

  #volumes = new Map<number, Volume>()
  #byKey = new Map<string, Volume>()
  #manifests = new Map<string, { manifest: Manifest, encoded?: Buffer }>()
  #deltas = new Map<string, Buffer>()
  #nextId = 1
  #sweeper: NodeJS.Timeout

  constructor () {
    this.#sweeper = setInterval(() => this.#closeIdle(), HANDLE_IDLE_MS)
    this.#sweeper.unref()
  }

  get size (): number { return this.#where.size }

  // A committed image's volume: every non-zero block becomes servable.
  addVolume (key: string, path: string, manifest: Manifest): void {
    const v = this.#volume(key, path, manifest, true)
    const count = blockCount(manifest.size, manifest.blockSize)
    for (let i = 0; i < count; i++) this.#add(v, i)
    this.#manifests.set(manifest.root.toString('hex'), { manifest })
  }

  // A fetch target: blocks become servable as they are verified and written (addBlocks).
  addPartial (key: string, path: string, manifest: Manifest): void {
    this.#volume(key, path, manifest, false)
    if (!this.#manifests.has(manifest.root.toString('hex'))) this.#manifests.set(manifest.root.toString('hex'), { manifest })
  }

  addBlocks (key: string, indices: Iterable<number>): void {
    const v = this.#byKey.get(key)
    if (!v) return
    for (const i of indices) this.#add(v, i)
  }

  // After commit a file-backed volume has a new path; open handles stay valid.
  movePath (key: string, path: string, complete = true): void {
    const v = this.#byKey.get(key)
    if (!v) return
    v.path = path
    v.complete = complete
    void v.handle?.then(h => h.close()).catch(() => {})
    v.handle = undefined
  }

  removeVolume (key: string): void {
    const v = this.#byKey.get(key)
    if (!v) return
    this.#byKey.delete(key)
    this.#volumes.delete(v.id)
    void v.handle?.then(h => h.close()).catch(() => {})
    // The index again without it: blocks that other volumes also hold come back.
    this.#where.clear()
    for (const other of this.#volumes.values()) {
      const b = other.blocks
      for (let i = 0; i < b.length; i++) if (b[i] === 1) this.#where.add(other.manifest.hashes, i * HASH_BYTES, other.id * VOLUME_SHIFT + i)
    }
    const rootHex = v.manifest.root.toString('hex')
    if (![...this.#volumes.values()].some(o => o.manifest.root.equals(v.manifest.root))) this.#manifests.delete(rootHex)
  }

  volumes (): Array<{ key: string, manifest: Manifest, complete: boolean }> {
    return [...this.#volumes.values()].map(v => ({ key: v.key, manifest: v.manifest, complete: v.complete }))
  }

  locate (hashes: Buffer, offset = 0): Location | undefined {
    const packed = this.#where.get(hashes, offset)
    if (packed < 0) return undefined
    const v = this.#volumes.get(Math.floor(packed / VOLUME_SHIFT))
    if (!v) return undefined
    const index = packed % VOLUME_SHIFT
    return { volume: v.key, path: v.path, index, length: blockLength(v.manifest, index) }
  }

  manifest (root: Buffer): Manifest | undefined {
    return this.#manifests.get(root.toString('hex'))?.manifest
  }

  async readManifest (root: Buffer): Promise<Buffer | undefined> {
    const m = this.#manifests.get(root.toString('hex'))
    if (!m) return undefined
    m.encoded ??= encodeManifest(m.manifest)
    return m.encoded
  }

  // Manifest `root` as a delta against `base`, when both are known here and the delta is
  // smaller than the manifest.
  async readManifestDelta (root: Buffer, base: Buffer, version: DeltaVersion = 2): Promise<Buffer | undefined> {
    const key = root.toString('hex') + base.toString('hex') + version
    const cached = this.#deltas.get(key)
    if (cached) return cached
    const next = this.#manifests.get(root.toString('hex'))
    const prev = this.#manifests.get(base.toString('hex'))
    if (!next || !prev) return undefined
    const delta = encodeManifestDelta(prev.manifest, next.manifest, version)
    next.encoded ??= encodeManifest(next.manifest)
    if (delta.length >= next.encoded.length) return undefined
    this.#deltas.set(key, delta)
    if (this.#deltas.size > DELTA_CACHE) this.#deltas.delete(this.#deltas.keys().next().value!)
    return delta
  }

  // Where the blocks are, in request order: each one's length (0: not here) and the file
  // ranges to read, back to back. Serving reads them on a block-pool worker (BlockPool.packFrom).
  locateBlocks (hashes: Buffer): BlockPlaces {
    const { sizes, runs } = this.#locate(hashes)
    return { sizes, reads: runs.map(r => ({ path: r.v.path, pos: r.pos, len: r.len })) }
  }

  // Reads the blocks in request order into one buffer here (a file that cannot be read: its
  // blocks are reported missing). Serving uses it when a worker could not read them.
  async readBlocks (hashes: Buffer): Promise<BlockBatch> {
    const { sizes, runs } = this.#locate(hashes)
    let total = 0
    for (const r of runs) total += r.len
    // Unpooled: it may move to a codec worker whole.
    const data = Buffer.allocUnsafeSlow(total)
    const failed = new Set<number>()
    let out = 0
    await Promise.all(runs.map(async (r, k) => {
      const at = out
      out += r.len
      try {
        const fh = await this.#handle(r.v)
        for (let got = 0; got < r.len;) {
          const { bytesRead } = await fh.read(data, at + got, r.len - got, r.pos + got)
          if (bytesRead === 0) throw new Error('short read')
          got += bytesRead
        }
      } catch {
        failed.add(k)
      }
    }))
    if (!failed.size) return { sizes, data, owned: true }
    // Runs cover the blocks in order: drop the blocks of the runs that failed.
    const parts: Buffer[] = []
    for (let i = 0, k = 0, left = runs[0]?.len ?? 0, at = 0; i < sizes.length; i++) {
      const size = sizes[i]!
      if (!size) continue
      if (failed.has(k)) sizes[i] = 0
      else parts.push(data.subarray(at, at + size))
      at += size
      left -= size
      if (left === 0) left = runs[++k]?.len ?? 0
    }
    return { sizes, data: Buffer.concat(parts) }
  }

  // Each block's length (0: not here) and the runs that hold them, in request order, merged
  // where they are contiguous in one volume.
  #locate (hashes: Buffer): { sizes: number[], runs: Array<{ v: Volume, pos: number, len: number }> } {
    const sizes: number[] = []
    const runs: Array<{ v: Volume, pos: number, len: number }> = []
    for (let o = 0; o < hashes.length; o += HASH_BYTES) {
      const packed = this.#where.get(hashes, o)
      const v = packed < 0 ? undefined : this.#volumes.get(Math.floor(packed / VOLUME_SHIFT))
      if (!v) { sizes.push(0); continue }
      const index = packed % VOLUME_SHIFT
      const len = blockLength(v.manifest, index)
      const pos = index * v.manifest.blockSize
      sizes.push(len)
      const last = runs[runs.length - 1]
      if (last?.v === v && last.pos + last.len === pos) last.len += len
      else runs.push({ v, pos, len })
    }
    return { sizes, runs }
  }

  close (): void {
    clearInterval(this.#sweeper)
    for (const v of this.#volumes.values()) void v.handle?.then(h => h.close()).catch(() => {})
  }

  #volume (key: string, path: string, manifest: Manifest, complete: boolean): Volume {
    const old = this.#byKey.get(key)
    if (old) {
      old.path = path
      old.complete = complete
      return old
    }
    const zero = zeroSlots(manifest.hashes)
    const blocks = new Uint8Array(zero.length)
    for (let i = 0; i < zero.length; i++) if (zero[i]) blocks[i] = 2
    const v: Volume = { id: this.#nextId++, key, path, manifest, complete, blocks, lastUse: 0 }
    this.#volumes.set(v.id, v)
    this.#byKey.set(key, v)
    return v
  }

  #add (v: Volume, i: number): void {
    if (v.blocks[i] !== 0) return
    v.blocks[i] = 1
    this.#where.add(v.manifest.hashes, i * HASH_BYTES, v.id * VOLUME_SHIFT + i)
  }

  #handle (v: Volume): Promise<fs.FileHandle> {
    v.lastUse = Date.now()
    v.handle ??= fs.open(v.path, 'r')
    v.handle.catch(() => { v.handle = undefined })
    return v.handle
  }

  #closeIdle (): void {
    const now = Date.now()
    for (const v of this.#volumes.values()) {
      if (v.handle && now - v.lastUse > HANDLE_IDLE_MS) {
        void v.handle.then(h => h.close()).catch(() => {})
        v.handle = undefined
      }
    }
  }
}
