// Packing the blocks a peer asked for into one response: read and packed on a block-pool
// worker where the host says where they are in files, else packed from what the host reads
// (a file that could not be read: its blocks are reported missing). zstd where negotiated and
// it pays. The level is fast (1) while the link keeps up; while responses wait for the link,
// the link is the limit, so packing time is free and bytes are not, as far as cores are idle
// (docs/measurements.md has the levels' ratios and speeds).

import { Codec, type CodecId } from '../../protocol/wire.js'
import type { OsfarmError } from '../../protocol/errors.js'
import { blockPool } from '../blocks/block-pool.js'
import { cpuIdleShare } from '../blocks/cpu-idle.js'
import type { SessionHost } from './session-host.js'

// Compress a response only when it saves at least this fraction.
const MIN_SAVING = 0.05

function linkBoundLevel (idle: number): number {
  return idle >= 0.5 ? 7 : idle >= 0.1 ? 3 : 1
}

export async function packBlocks (host: Pick<SessionHost, 'locateBlocks' | 'readBlocks'>, hashes: Buffer, zstd: boolean, linkBound: boolean): Promise<{ sizes: number[], raw: number, data: Buffer, codec: CodecId }> {
  const level = !zstd ? 0 : linkBound ? linkBoundLevel(cpuIdleShare()) : 1
  const places = host.locateBlocks?.(hashes)
  if (places) {
    const raw = places.sizes.reduce((sum, n) => sum + n, 0)
    const packed = await blockPool().packFrom(places.reads, level, MIN_SAVING).catch(err => {
      if ((err as OsfarmError).code === 'IO_ERROR') return undefined
      throw err
    })
    if (packed) return { sizes: places.sizes, raw, data: packed.data, codec: packed.compressed ? Codec.ZSTD : Codec.RAW }
  }
  const batch = await host.readBlocks(hashes)
  const raw = batch.data.length
  if (!level || !raw) return { sizes: batch.sizes, raw, data: batch.data, codec: Codec.RAW }
  const packed = await blockPool().pack(batch.data, level, MIN_SAVING, batch.owned)
  return { sizes: batch.sizes, raw, data: packed.data, codec: packed.compressed ? Codec.ZSTD : Codec.RAW }
}
