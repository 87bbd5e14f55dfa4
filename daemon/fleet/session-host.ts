// What a peer session exchanges with its daemon: the host it serves from and reports to, the
// stream it runs on, the batches of blocks it moves, its counters.

import type { EventEmitter } from 'node:events'
import type { Advert, CodecId, Have, Message } from '../../protocol/wire.js'
import type { RateLimiter } from './rate-limiter.js'
import type { ReadRun } from '../blocks/block-worker.js'
import type { DeltaVersion } from '../blocks/manifest-delta.js'
import type { PeerSession } from './peer-session.js'

export interface BlockBatch {
  // Raw length of each requested block in order, 0 where missing; `data` holds them back to back.
  sizes: number[]
  data: Buffer
  // Bytes this batch took on the wire (compressed payload and framing), when received.
  wireBytes?: number
  // Received: 1 where block j matches the hash it was asked by (checked off the main thread).
  valid?: Uint8Array
  // Read for serving: `data` is an unpooled buffer no one else holds (it may move to a worker).
  owned?: boolean
}

// Where a batch's blocks are: each one's raw length in request order (0: not here) and the
// file ranges that hold them, back to back.
export interface BlockPlaces {
  sizes: number[]
  reads: ReadRun[]
}

// What a session needs from its daemon.
export interface SessionHost {
  readonly hostName: string
  readonly codecs: CodecId[]
  readonly uploadLimiter: RateLimiter
  readonly peerUploadLimit: number
  // The share of this host's cores that packing what it serves may use (block-packer.ts).
  readonly serveCpuShare?: number
  // The TCP port this host takes lanes on (none: it takes none).
  readonly lanePort?: number | undefined
  helloAdverts (): Advert[]
  onHello (session: PeerSession): void
  onAdverts (session: PeerSession, adverts: Advert[]): void
  onHave (session: PeerSession, have: Have): void
  readManifest (root: Buffer): Promise<Buffer | undefined>
  readBlocks (hashes: Buffer): Promise<BlockBatch>
  // Where blocks are in files (none: the source is not files): they are then read off the
  // main thread.
  locateBlocks? (hashes: Buffer): BlockPlaces | undefined
  // Seeding and pre-staging (optional): the upload limit for background requests for an image
  // (none named: the strictest), manifest deltas, withdrawn adverts and the service messages
  // (Stage, StageStatus, SeedDefaults).
  backgroundLimiter? (root?: Buffer): RateLimiter | undefined
  readManifestDelta? (root: Buffer, base: Buffer, version: DeltaVersion): Promise<Buffer | undefined>
  onWithdraw? (session: PeerSession, roots: Buffer[]): void
  // Adverts a peer passes on (it does not hold those images).
  onOffers? (session: PeerSession, adverts: Advert[]): void
  onService? (session: PeerSession, msg: ServiceMessage): void
}

// Messages a session passes to the daemon's services as they are.
export type ServiceMessage = Extract<Message, { type: 'Stage' | 'StageStatus' | 'SeedDefaults' }>

export interface Stream extends EventEmitter {
  write (data: Buffer): boolean
  // A secret stream's buffer for the next write, encrypted where it lies (no copy).
  alloc? (n: number): Buffer
  destroy (err?: Error): void
  destroyed: boolean
}

export interface SessionStats {
  bytesIn: number
  bytesOut: number
  // Block payload bytes before compression.
  rawIn: number
  rawOut: number
  blocksIn: number
  blocksOut: number
  // Bytes per second received, recent.
  rateIn: number
  connectedAt: number
}
