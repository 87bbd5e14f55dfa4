// Pre-staging's API types: a disk's points, staged on a target host, and their reports.

import type { TransferStats } from './rpc.js'
import type { Params } from './api.js'

export type PrestageState = 'indexing' | 'staging' | 'staged' | 'syncing' | 'failed' | 'cancelled'

export interface PrestagePoint {
  seq: number
  root: string
  volume: string
  createdAt: string
  // How the point was taken and indexed.
  capture: 'reflink' | 'thin-snapshot' | 'copy' | 'image'
  index: 'full' | 'extents' | 'thin-delta' | 'manifest'
  // Blocks hashed for this point (the rest came from the base image's or the last point's
  // manifest), and blocks whose hash differs from the previous point (or the base image).
  hashedBlocks: number
  changedBlocks: number
  indexMs: number
}

export interface PrestageTargetReport {
  seq: number
  state: string
  done: number
  total: number
  message?: string
  stats?: TransferStats
}

export interface PrestageInfo {
  id: string
  // 'source': the disk's host; 'target': where the copy goes.
  role: 'source' | 'target'
  state: PrestageState
  disk: string
  // The peer: the target's key (on the source), the source's key (on the target).
  peer: string
  peerHost: string
  base: { name: string, root: string } | null
  size: number
  points: PrestagePoint[]
  // On the source: the target's last report per point.
  target: PrestageTargetReport | null
  // On the target: the committed volume holding the newest complete point, and its path.
  volume?: string
  path?: string
  createdAt: string
  error?: string
}

export type PrestageStartParams = Params<'prestage.start'>
