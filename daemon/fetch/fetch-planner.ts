// Decides where each block of a wanted manifest comes from: the snapshot parent (same hash at
// the same offset: free), another local volume (a local copy), or peers. Pure: no I/O.

import { HASH_BYTES } from '../blocks/hash.js'
import { blockCount, sameSlot, zeroSlots, type Manifest } from '../blocks/manifest.js'
import { HashIndex } from '../blocks/hash-index.js'
import type { Location } from '../blocks/local-blocks.js'

export interface Candidate {
  volume: string
  manifest: Manifest
}

export interface LocalCopy {
  index: number
  from: Location
}

export interface FetchPlan {
  parent: string | undefined
  // Non-zero blocks the snapshot already holds at the right offset.
  inPlace: number[]
  // Zero blocks where the parent has data: they must become zeros (holes).
  zeroOverParent: number[]
  zeroBlocks: number
  local: LocalCopy[]
  // Blocks to fetch, one entry per distinct hash: every index that holds it (the hash is the
  // manifest's at the first, so an entry holds no copy or view of it).
  remote: Array<{ indices: number[] }>
  remoteBlocks: number
}

// The candidate with the most non-zero blocks equal at the same offset, if any matches at all.
export function chooseParent (want: Manifest, candidates: Candidate[]): { volume: string, manifest: Manifest, matches: number } | undefined {
  let best: { volume: string, manifest: Manifest, matches: number } | undefined
  const count = blockCount(want.size, want.blockSize)
  const zero = zeroSlots(want.hashes)
  for (const c of candidates) {
    if (c.manifest.blockSize !== want.blockSize) continue
    const n = Math.min(count, blockCount(c.manifest.size, c.manifest.blockSize))
    let matches = 0
    for (let i = 0; i < n; i++) if (!zero[i] && sameSlot(want.hashes, c.manifest.hashes, i)) matches++
    if (matches > 0 && (!best || matches > best.matches)) best = { volume: c.volume, manifest: c.manifest, matches }
  }
  return best
}

// `done` (a bitfield, from an interrupted fetch) marks blocks already in the target. A fresh
// fetch marks in-place blocks and zero blocks that are already holes as done before it starts,
// so on a resume every zero block not yet done is one the parent had data for.
export function planFetch (want: Manifest, parent: Candidate | undefined, locate: (hashes: Buffer, offset: number) => Location | undefined, done?: Buffer): FetchPlan {
  const count = blockCount(want.size, want.blockSize)
  const parentCount = parent ? blockCount(parent.manifest.size, parent.manifest.blockSize) : 0
  const plan: FetchPlan = { parent: parent?.volume, inPlace: [], zeroOverParent: [], zeroBlocks: 0, local: [], remote: [], remoteBlocks: 0 }
  // Distinct remote hashes → their entry in plan.remote.
  const remote = new HashIndex(k => ({ buf: want.hashes, offset: plan.remote[k]!.indices[0]! * HASH_BYTES }))
  const zero = zeroSlots(want.hashes)
  const parentZero = parent ? zeroSlots(parent.manifest.hashes) : undefined
  for (let i = 0; i < count; i++) {
    const o = i * HASH_BYTES
    if (zero[i]) {
      plan.zeroBlocks++
      if (done && (done[i >> 3]! & (1 << (i & 7)))) continue
      if (done || (i < parentCount && !parentZero![i])) plan.zeroOverParent.push(i)
      continue
    }
    if (done && (done[i >> 3]! & (1 << (i & 7)))) continue
    if (i < parentCount && sameSlot(want.hashes, parent!.manifest.hashes, i)) {
      plan.inPlace.push(i)
      continue
    }
    const from = locate(want.hashes, o)
    if (from) {
      plan.local.push({ index: i, from })
      continue
    }
    const k = remote.get(want.hashes, o)
    if (k >= 0) plan.remote[k]!.indices.push(i)
    else {
      remote.add(want.hashes, o, plan.remote.length)
      plan.remote.push({ indices: [i] })
    }
    plan.remoteBlocks++
  }
  return plan
}
