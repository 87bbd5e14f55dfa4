// Seeding's API types: policies (which images a host holds ahead of need) and their status.

import type { Params } from './api.js'

// Which images a host holds ahead of need. An advert matches when its name matches `match` (a
// glob: * and ?) and, with `label` ("key=glob"), one of its labels does; of the matches, the
// `keep` newest (by the builder's time) are held, those over `maxSize` bytes never.
export type SeedPolicyParams = Params<'seed.add'>

export interface SeedPolicy {
  id: string
  match: string
  label: string | null
  keep: number
  maxSize: number | null
  priority: number
  uploadLimit: number
  downloadLimit: number
  // 'host': this host's own; 'fleet': a fleet-wide default (any allowed host may change it).
  scope: 'host' | 'fleet'
  createdAt: string
  // In listings: bytes this host has served to seeding requests under this policy since it
  // started.
  uploaded?: number
}

export interface SeedHolder {
  key: string
  host: string
  complete: boolean
  // Part-way holders: blocks verified of all blocks (from their Have bitfields).
  blocks?: number
  total?: number
}

export type SeedLocalState = 'held' | 'fetching' | 'queued' | 'paused' | 'waiting' | 'failed' | 'unwanted'

export interface SeedImageStatus {
  root: string
  name: string
  size: number
  created: string | null
  labels: string[]
  // Policies that want it (empty: held by seeding but no longer wanted, or only seen).
  policies: string[]
  local: SeedLocalState
  // Why it waits or failed; the running job.
  reason?: string
  job?: string
  // Fraction of the blocks this host has (1 when held).
  progress: number
  holders: SeedHolder[]
  // Roll-out: hosts in view (connected peers and this one), hosts holding it whole, and the
  // mean fraction held over those hosts.
  fleet: { hosts: number, complete: number, progress: number }
}

export interface SeedStatus {
  policies: SeedPolicy[]
  images: SeedImageStatus[]
  // Seeding waits while a user's job runs.
  paused: boolean
  // Bytes (non-zero data) of images seeding brought here, and the cap on them (null: none).
  heldBytes: number
  cap: number | null
  fleetDefaultsVersion: number
}
