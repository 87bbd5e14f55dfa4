// Packing the blocks a peer asked for into one response: read and packed on a block-pool
// worker where the host says where they are in files, else packed from what the host reads
// (a file that could not be read: its blocks are reported missing). zstd where negotiated and
// it pays.
//
// The level is priced. While the link keeps up, the CPU is the limit: the fastest level (1).
// While responses wait for the link, a harder level saves bytes the link would take time for,
// and costs CPU that belongs to whatever else runs here (on a hypervisor, the VMs): it is taken
// only where what it costs at the rate this host serves fits both the idle cores and the share
// of the host's cores the operator lets serving use (`serveCpuShare`). The cost per byte of each
// level is measured here, on the workers, as responses are packed (docs/measurements.md has the
// levels' ratios and speeds).

import os from 'node:os'
import { Codec, type CodecId } from '../../protocol/wire.js'
import type { OsfarmError } from '../../protocol/errors.js'
import { blockPool, type Packed } from '../blocks/block-pool.js'
import { cpuIdleShare } from '../blocks/cpu-idle.js'
import type { SessionHost } from './session-host.js'

// Compress a response only when it saves at least this fraction.
const MIN_SAVING = 0.05
// Harder levels, tried from the hardest.
const HARD_LEVELS = [7, 5, 3]
// Cost per byte of each level against level 1's, until this host has measured it.
const RELATIVE_COST: Record<number, number> = { 1: 1, 3: 1.4, 5: 2.75, 7: 4 }
// Level 1's cost in core-seconds per raw byte, until measured.
const LEVEL_1_COST = 1 / 500e6
// Measurements and the serving rate: exponentially weighted over about this long.
const WINDOW_MS = 2000

export interface LevelInput {
  linkBound: boolean
  // Cores that may go to packing: idle ones (with what packing uses now) and the operator's cap.
  idleCores: number
  shareCores: number
  // Raw bytes per second this host packs.
  rate: number
  // Core-seconds per raw byte at a level.
  cost: (level: number) => number
}

export function packLevel (o: LevelInput): number {
  if (!o.linkBound) return 1
  const budget = Math.min(o.idleCores, o.shareCores)
  for (const level of HARD_LEVELS) if (o.rate * o.cost(level) <= budget) return level
  return 1
}

// What packing has cost here, per level, and how fast this host is packing.
export class PackCosts {
  readonly #perByte = new Map<number, number>()
  #rate = 0
  #at: number
  #lastLevel = 1

  constructor (now = performance.now()) {
    this.#at = now
  }

  observe (level: number, raw: number, ms: number, now = performance.now()): void {
    if (raw > 0 && ms > 0) {
      const old = this.#perByte.get(level)
      const sample = ms / 1000 / raw
      this.#perByte.set(level, old === undefined ? sample : old * 0.9 + sample * 0.1)
    }
    const dt = Math.max(1, now - this.#at)
    const w = Math.min(1, dt / WINDOW_MS)
    this.#rate = this.#rate * (1 - w) + (raw * 1000 / dt) * w
    this.#at = now
    this.#lastLevel = level
  }

  cost (level: number): number {
    const measured = this.#perByte.get(level)
    if (measured !== undefined) return measured
    const one = this.#perByte.get(1) ?? LEVEL_1_COST
    return one * (RELATIVE_COST[level] ?? 1)
  }

  get rate (): number { return this.#rate }

  // Cores packing uses now (at the last level, at the current rate).
  get using (): number { return this.#rate * this.cost(this.#lastLevel) }
}

const costs = new PackCosts()
const cores = os.availableParallelism()

export async function packBlocks (host: Pick<SessionHost, 'locateBlocks' | 'readBlocks' | 'serveCpuShare'>, hashes: Buffer, zstd: boolean, linkBound: boolean): Promise<{ sizes: number[], raw: number, data: Buffer, codec: CodecId }> {
  const level = !zstd ? 0 : packLevel({ linkBound, idleCores: cpuIdleShare() * cores + costs.using, shareCores: (host.serveCpuShare ?? 1) * cores, rate: costs.rate, cost: l => costs.cost(l) })
  const done = (sizes: number[], raw: number, packed: Packed) => {
    if (level) costs.observe(level, raw, packed.packMs)
    return { sizes, raw, data: packed.data, codec: packed.compressed ? Codec.ZSTD : Codec.RAW }
  }
  const places = host.locateBlocks?.(hashes)
  if (places) {
    const raw = places.sizes.reduce((sum, n) => sum + n, 0)
    const packed = await blockPool().packFrom(places.reads, level, MIN_SAVING).catch(err => {
      if ((err as OsfarmError).code === 'IO_ERROR') return undefined
      throw err
    })
    if (packed) return done(places.sizes, raw, packed)
  }
  const batch = await host.readBlocks(hashes)
  const raw = batch.data.length
  if (!level || !raw) return { sizes: batch.sizes, raw, data: batch.data, codec: Codec.RAW }
  return done(batch.sizes, raw, await blockPool().pack(batch.data, level, MIN_SAVING, batch.owned))
}
