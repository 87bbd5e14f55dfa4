// A pre-stage point: a consistent copy of a disk at one instant, as a committed store volume.
// A raw file becomes a reflink clone (shares every extent: instant, and later writes to the
// disk do not reach it); an LV in the store's thin pool a thin snapshot; anything else a plain
// copy, consistent only if nothing writes the disk meanwhile. Then the point is indexed: hashes
// of the blocks that may differ from a known manifest (the previous point, or the image the
// disk came from), found by thin_delta or the extent maps, the rest taken from that manifest.

import fs from 'node:fs/promises'
import { BAD_PARAMS, IO_ERROR, JOB_CANCELLED } from '../../protocol/errors.js'
import type { PrestagePoint } from '../../protocol/rpc.js'
import type { BlockHasher } from '../blocks/block-hasher.js'
import { deviceSize } from '../blocks/block-hasher.js'
import { hashInto, HASH_BYTES } from '../blocks/hash.js'
import { blockCount, createManifest, zeroBlockCount, type Manifest } from '../blocks/manifest.js'
import { changedSlots } from '../blocks/manifest-delta.js'
import { copyNonZero } from '../images/block-copy.js'
import type { LayerStore, VolumeInfo } from '../store/layer-store.js'
import { runOk } from '../tools/run.js'
import { differingRanges, readExtents } from './extent-map.js'

const CHUNK_BYTES = 1 << 20
// Unchanged blocks between two changed ones that are read rather than seeked over.
const GAP_BLOCKS = 16

export interface Disk {
  kind: 'file' | 'device'
  path: string
  size: number
}

export async function openDisk (path: string): Promise<Disk> {
  const st = await fs.stat(path).catch(err => { throw BAD_PARAMS(`cannot read ${path}: ${err.code ?? err.message}`) })
  if (!st.isFile() && !st.isBlockDevice()) throw BAD_PARAMS(`${path} is neither a raw file nor a block device`)
  const size = await deviceSize(path)
  if (size === 0) throw BAD_PARAMS(`${path} is empty`)
  return { kind: st.isFile() ? 'file' : 'device', path, size }
}

// Stores that can snapshot a device outside the store (an LV of the same thin pool).
interface SnapshottingStore extends LayerStore {
  snapshotOf? (key: string, device: string): Promise<VolumeInfo>
}

export async function capturePoint (store: SnapshottingStore, disk: Disk, key: string, signal?: AbortSignal): Promise<{ volume: VolumeInfo, capture: PrestagePoint['capture'] }> {
  if (disk.kind === 'device' && store.snapshotOf) {
    const snap = await store.snapshotOf(key, disk.path).catch(() => undefined)
    if (snap) return { volume: await store.commit(key), capture: 'thin-snapshot' }
  }
  const vol = await store.prepare(key, { size: disk.size })
  try {
    let capture: PrestagePoint['capture'] = 'copy'
    if (disk.kind === 'file' && store.backend === 'file') {
      try {
        await runOk('cp', ['--reflink=always', '--no-preserve=all', '--', disk.path, vol.path], { signal })
        capture = 'reflink'
      } catch (err) {
        if ((err as { code?: string }).code === 'JOB_CANCELLED') throw err
        await copyFile(disk, vol, signal)
      }
    } else {
      await copyFile(disk, vol, signal)
    }
    return { volume: await store.commit(key), capture }
  } catch (err) {
    await store.remove(key).catch(() => {})
    throw err
  }
}

async function copyFile (disk: Disk, vol: VolumeInfo, signal?: AbortSignal): Promise<void> {
  const from = await fs.open(disk.path, 'r')
  const to = await fs.open(vol.path, 'r+')
  try {
    if (vol.size > disk.size) await to.truncate(disk.size).catch(() => {})
    await copyNonZero(from, to, { size: disk.size, blockSize: 4096, signal })
    await to.sync()
  } finally {
    await from.close()
    await to.close()
  }
}

export interface IndexResult {
  manifest: Manifest
  index: PrestagePoint['index']
  hashedBlocks: number
  changedBlocks: number
}

export interface IndexOptions {
  store: LayerStore
  hasher: BlockHasher
  blockSize: number
  volume: VolumeInfo
  size: number
  // What the point is compared with: the previous point or the disk's image.
  prev?: { manifest: Manifest, volume: VolumeInfo }
  signal?: AbortSignal
  onProgress?: (done: number, total: number) => void
}

export async function indexPoint (o: IndexOptions): Promise<IndexResult> {
  const prev = o.prev && o.prev.manifest.blockSize === o.blockSize ? o.prev : undefined
  let ranges: Array<[number, number]> | undefined
  let index: PrestagePoint['index'] = 'full'
  if (prev && o.store.changedBlocks && o.store.backend !== 'file') {
    ranges = await o.store.changedBlocks(o.volume.key, prev.volume.key).catch(() => undefined)
    if (ranges) index = 'thin-delta'
  }
  if (!ranges && (await fs.stat(o.volume.path)).isFile()) {
    // Extent maps: against the previous point or image, or against nothing (then only the
    // point's data ranges are read; its holes are zero blocks).
    try {
      const mine = await readExtents(o.volume.path, o.signal)
      const theirs = prev && (await fs.stat(prev.volume.path)).isFile() ? await readExtents(prev.volume.path, o.signal) : prev ? undefined : []
      if (theirs) {
        ranges = differingRanges(mine, theirs, o.size, o.blockSize)
        index = 'extents'
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'JOB_CANCELLED') throw err
    }
  }
  if (!ranges) {
    const manifest = await o.hasher.indexFile(o.volume.path, { blockSize: o.blockSize, size: o.size, signal: o.signal, onProgress: o.onProgress })
    const count = blockCount(o.size, o.blockSize)
    return { manifest, index: 'full', hashedBlocks: count, changedBlocks: prev ? changedSlots(prev.manifest, manifest).length : count - zeroBlockCount(manifest) }
  }
  const count = blockCount(o.size, o.blockSize)
  const hashes = Buffer.alloc(count * HASH_BYTES)
  if (prev) prev.manifest.hashes.copy(hashes, 0, 0, Math.min(prev.manifest.hashes.length, hashes.length))
  // Blocks past the previous size were never compared: hash them too.
  const prevSize = prev ? prev.manifest.size : 0
  if (prev && o.size > prevSize) ranges.push([Math.floor(prevSize / o.blockSize) * o.blockSize, o.size - Math.floor(prevSize / o.blockSize) * o.blockSize])
  const hashed = await hashRanges(o.volume.path, o.size, o.blockSize, ranges, hashes, o.signal, o.onProgress)
  const manifest = createManifest(o.blockSize, o.size, hashes)
  return { manifest, index, hashedBlocks: hashed, changedBlocks: prev ? changedSlots(prev.manifest, manifest).length : count - zeroBlockCount(manifest) }
}

// Hashes the blocks of `ranges` into their slots (zero blocks: all-zero slots); returns how
// many blocks it hashed. Nearby ranges are read together (gaps of up to GAP_BLOCKS are read and
// skipped), one read ahead of the hashing, so scattered writes do not cost a read each.
async function hashRanges (file: string, size: number, blockSize: number, ranges: Array<[number, number]>, hashes: Buffer, signal?: AbortSignal, onProgress?: (done: number, total: number) => void): Promise<number> {
  const count = Math.ceil(size / blockSize)
  // Merged block ranges [first, end).
  const blocks: Array<[number, number]> = []
  for (const [s, l] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const first = Math.floor(s / blockSize)
    const end = Math.min(count, Math.ceil((s + l) / blockSize))
    if (end <= first) continue
    const last = blocks[blocks.length - 1]
    if (last && first <= last[1]) last[1] = Math.max(last[1], end)
    else blocks.push([first, end])
  }
  // Reads: spans of at most READ_BLOCKS, each with the ranges (to hash) inside it.
  const per = Math.floor(CHUNK_BYTES / blockSize)
  const reads: Array<{ first: number, end: number, parts: Array<[number, number]> }> = []
  for (let [first, end] of blocks) {
    while (first < end) {
      const last = reads[reads.length - 1]
      const stop = Math.min(end, first + per)
      if (last && first - last.end <= GAP_BLOCKS && stop - last.first <= per) {
        last.parts.push([first, stop])
        last.end = stop
      } else {
        reads.push({ first, end: stop, parts: [[first, stop]] })
      }
      first = stop
    }
  }
  const total = blocks.reduce((n, [f, e]) => n + e - f, 0)
  const bufs = [Buffer.allocUnsafe(per * blockSize), Buffer.allocUnsafe(per * blockSize)]
  const zero = Buffer.alloc(blockSize)
  const fh = await fs.open(file, 'r')
  const read = async (k: number): Promise<void> => {
    const r = reads[k]!
    const len = Math.min(size, r.end * blockSize) - r.first * blockSize
    const buf = bufs[k & 1]!
    let got = 0
    while (got < len) {
      const { bytesRead } = await fh.read(buf, got, len - got, r.first * blockSize + got)
      if (bytesRead === 0) throw IO_ERROR(`${file} ended at ${r.first * blockSize + got}, expected ${size}`)
      got += bytesRead
    }
  }
  let hashed = 0
  try {
    let next = reads.length ? read(0) : undefined
    for (let k = 0; k < reads.length; k++) {
      if (signal?.aborted) throw JOB_CANCELLED()
      await next
      next = k + 1 < reads.length ? read(k + 1) : undefined
      next?.catch(() => {})
      const r = reads[k]!
      const buf = bufs[k & 1]!
      for (const [f, e] of r.parts) {
        for (let i = f; i < e; i++) {
          const o = (i - r.first) * blockSize
          const len = Math.min(blockSize, size - i * blockSize)
          const isZero = len === blockSize ? buf.compare(zero, 0, blockSize, o, o + blockSize) === 0 : buf.subarray(o, o + len).every(b => b === 0)
          if (isZero) hashes.fill(0, i * HASH_BYTES, (i + 1) * HASH_BYTES)
          else hashInto(buf.subarray(o, o + len), hashes, i * HASH_BYTES)
          hashed++
        }
      }
      onProgress?.(hashed * blockSize, total * blockSize)
    }
    await next
  } finally {
    await fh.close()
  }
  return hashed
}

// Point volumes (keys with the service's prefix) that no record names: a crash after a point
// was taken and before it was recorded leaves one, committed, that nothing would ever remove.
export async function sweepPoints (store: LayerStore, prefix: string, named: Set<string>): Promise<string[]> {
  const removed: string[] = []
  for (const v of await store.list()) {
    if (!v.key.startsWith(prefix) || named.has(v.key)) continue
    await store.remove(v.key)
    removed.push(v.key)
  }
  return removed
}
