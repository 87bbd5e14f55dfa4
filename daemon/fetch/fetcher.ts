// The fetch engine: fills a target volume with the blocks of a manifest that it lacks. Zero
// blocks and holes first, then local copies (local-fill.ts) and remote blocks (remote-fetch.ts,
// scheduled by scheduler.ts) at once, each block marked in the resume bitfield once written
// (target-writer.ts). The request flow, step by step, is in docs/fetch-flow.md.

import { blockCount, type Manifest } from '../blocks/manifest.js'
import { JOB_CANCELLED } from '../../protocol/errors.js'
import { MAX_HASHES_PER_REQUEST, MAX_BLOCK_BYTES } from '../../protocol/wire.js'
import type { TransferStats } from '../../protocol/rpc.js'
import type { RateLimiter } from '../fleet/rate-limiter.js'
import type { FetchPlan } from './fetch-planner.js'
import type { LocalBlocks } from '../blocks/local-blocks.js'
import type { Progress } from './progress.js'
import { LocalFill } from './local-fill.js'
import { RemoteFetch, type PeerPool } from './remote-fetch.js'
import { TargetWriter } from './target-writer.js'

export type { PeerPool } from './remote-fetch.js'

// A response's raw cap: fewer, larger frames and packs (zstd gains too).
const BATCH_BYTES = 1 << 20
const FLUSH_MS = 1000
// Also flush once this much was written since the last flush: writeback then runs during the
// transfer, and the last sync (which the job waits for) has only the tail to write.
const FLUSH_BYTES = 16 << 20

export type FetchStats = TransferStats

export interface FetcherOptions {
  manifest: Manifest
  volume: string
  path: string
  plan: FetchPlan
  progress: Progress
  pool: PeerPool
  local: LocalBlocks
  stats: FetchStats
  from?: Set<string>
  signal?: AbortSignal
  peerWaitMs?: number
  onFlush?: (bits: Buffer) => void
  onProgress?: (done: number, total: number) => void
  // Background work (seeding): peers serve these requests after everyone else's.
  background?: boolean
  // This host's key: background fetches split the blocks to ask whole holders for among the
  // hosts fetching the same image (those that sent a Have for it).
  self?: string
  // Called with block indices once written or copied (servable, final), before they are synced.
  onWritten?: (indices: number[]) => void
  // Caps how fast this fetch asks for blocks (raw bytes per second).
  limiter?: RateLimiter
}

export class Fetcher {
  readonly #o: FetcherOptions
  readonly #m: Manifest
  readonly #writer: TargetWriter
  readonly #local: LocalFill
  readonly #remote: RemoteFetch
  readonly #total: number
  #completed = 0
  #failure: Error | undefined
  #finish!: () => void
  #fail!: (err: Error) => void

  constructor (options: FetcherOptions) {
    const o = options
    this.#o = o
    this.#m = o.manifest
    this.#total = o.plan.remoteBlocks + o.plan.local.length + o.plan.zeroOverParent.length
    this.#writer = new TargetWriter(o.path, o.progress, o.onFlush)
    this.#local = new LocalFill({
      manifest: o.manifest,
      plan: o.plan,
      writer: this.#writer,
      ...(o.signal ? { signal: o.signal } : {}),
      failed: () => !!this.#failure,
      onCopied: (indices, cloned) => this.#copied(indices, cloned)
    })
    const batch = Math.max(1, Math.min(MAX_HASHES_PER_REQUEST, Math.floor(Math.min(BATCH_BYTES, MAX_BLOCK_BYTES) / o.manifest.blockSize)))
    this.#remote = new RemoteFetch({
      manifest: o.manifest,
      path: o.path,
      plan: o.plan,
      pool: o.pool,
      stats: o.stats,
      batch,
      ...(o.from ? { from: o.from } : {}),
      ...(o.peerWaitMs !== undefined ? { peerWaitMs: o.peerWaitMs } : {}),
      ...(o.background ? { background: true } : {}),
      ...(o.self ? { self: o.self } : {}),
      ...(o.limiter ? { limiter: o.limiter } : {}),
      onWritten: indices => this.#inPlace(indices),
      onFinished: () => this.#finish(),
      onFailed: err => this.#abort(err)
    })
  }

  async run (): Promise<void> {
    const o = this.#o
    await this.#writer.open()
    const flusher = setInterval(() => { this.#writer.flush().catch(err => this.#abort(err)) }, FLUSH_MS)
    const onAbort = () => this.#fail(JOB_CANCELLED())
    try {
      const remote = new Promise<void>((resolve, reject) => { this.#finish = resolve; this.#fail = reject })
      // Rejections are read through Promise.all below or not at all (an earlier step failed).
      remote.catch(() => {})
      o.signal?.addEventListener('abort', onAbort, { once: true })
      if (o.signal?.aborted) throw JOB_CANCELLED()
      // Zeros first, holes dug at once: nothing touches those blocks after, so each data block
      // is final once written (onWritten) and may be served from then on.
      await this.#local.zeroOverParent()
      await this.#local.digHoles()
      this.#remote.start()
      await Promise.all([this.#local.copyLocal(), remote])
      if (this.#failure) throw this.#failure
      await this.#writer.flush()
    } catch (err) {
      this.#remote.stop()
      await this.#writer.flush().catch(() => {})
      throw err
    } finally {
      clearInterval(flusher)
      o.signal?.removeEventListener('abort', onAbort)
      this.#remote.close()
      await this.#writer.close()
    }
  }

  #copied (indices: number[], cloned: boolean): void {
    for (const i of indices) this.#writer.mark(i)
    this.#o.local.addBlocks(this.#o.volume, indices)
    this.#o.onWritten?.(indices)
    this.#o.stats.copiedLocal += indices.length
    if (cloned) this.#o.stats.clonedLocal = (this.#o.stats.clonedLocal ?? 0) + indices.length
    this.#completed += indices.length
    this.#o.onProgress?.(this.#completed, this.#total)
  }

  // Blocks received, hashed and now written at `indices`: progress, the locator.
  #inPlace (indices: number[]): void {
    for (const i of indices) this.#writer.mark(i)
    this.#o.local.addBlocks(this.#o.volume, indices)
    this.#o.onWritten?.(indices)
    this.#completed += indices.length
    this.#o.onProgress?.(this.#completed, this.#total)
    if (this.#writer.wrote(indices.length * this.#m.blockSize, FLUSH_BYTES)) this.#writer.flush().catch(err => this.#abort(err))
  }

  #abort (err: unknown): void {
    if (this.#failure) return
    this.#failure = err instanceof Error ? err : new Error(String(err))
    this.#remote.stop()
    this.#fail(this.#failure)
  }
}

export function emptyStats (m: Manifest): FetchStats {
  return {
    blocks: blockCount(m.size, m.blockSize),
    zeroBlocks: 0,
    inPlace: 0,
    copiedLocal: 0,
    received: 0,
    resumed: 0,
    rawBytes: 0,
    wireBytes: 0,
    manifestBytes: 0,
    badBlocks: 0,
    droppedPeers: [],
    peers: {},
    elapsedMs: 0,
    rate: 0,
    phases: {},
    remoteMs: 0
  }
}
