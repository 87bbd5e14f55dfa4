// The local API: JSON-RPC 2.0 method names, their params and results, and the notifications the
// daemon pushes. Shared by osfarmd and osfarmctl; fields are only ever appended.

import type { Params } from './api.js'

export const API_VERSION = 1

// What a caller may do (README, "Who may do what"): `admin` (root, through the admin socket or
// a loopback browser of uid 0) may also name host paths for osfarmd to open; `user` (the socket
// group, an HTTP token) moves bytes through the API instead; `read` may only look.
export type Rights = 'admin' | 'user' | 'read'

// A spec's text (XML or JSON) is at most this many bytes of UTF-8, whatever it holds.
export const MAX_SPEC_BYTES = 1 << 20
// A frame is one line of JSON; anything longer is refused without being parsed. JSON escaping
// grows a string at most sixfold (a control character becomes \u00XX), so a spec of
// MAX_SPEC_BYTES always fits with room for the other params.
export const MAX_FRAME_BYTES = 8 << 20

export interface ImageInfo {
  id: string
  name: string
  size: number
  root: string
  blockSize: number
  blocks: number
  zeroBlocks: number
  createdAt: string
  volume: string
  origin: 'import' | 'build' | 'fetch'
  layers: string[]
  // "key=value" labels, set where the image was made (import or build --label, a spec's labels)
  // and carried in its signed advert.
  labels?: string[]
  // Built images (and fetched ones whose advert carries them): the version among the images of
  // this name built from one spec (1, 2, …; `NAME` is the newest, `NAME@N` any version held),
  // and that spec's key (its layers' keys without the repositories' states).
  version?: number
  specKey?: string
  // The repository states the image was built from, and which layer first read each.
  inputs?: RepoInput[]
  // The step of each layer (parallel to layers).
  steps?: string[]
  // Other top-layer keys that gave the same content (a rebuild after an unrelated mirror change).
  keys?: string[]
}

// One apt repository suite's state as a build read it: the BLAKE3 of its InRelease's signed text
// (or Release), and when this host first saw that state.
export interface RepoInput {
  uri: string
  suite: string
  hash: string
  seenAt: string
  // The lowest layer (index) that read it.
  layer?: number
}

export type JobState = 'running' | 'done' | 'failed' | 'cancelled'

export interface JobProgress {
  phase: string
  done: number
  total: number
  unit: 'bytes' | 'blocks' | 'steps'
}

export interface JobInfo {
  id: string
  kind: string
  target: string
  state: JobState
  progress: JobProgress
  createdAt: string
  finishedAt?: string
  result?: unknown
  error?: { code: string, message: string }
  // 'background': work the daemon started itself (seeding); absent for a user's jobs.
  priority?: 'background'
}

export interface StoreUsage {
  backend: string
  volumes: number
  bytesUsed: number
  bytesFree: number
}

export interface DaemonStatus {
  version: string
  apiVersion: number
  pid: number
  uptimeSeconds: number
  dataDir: string
  socket: string
  store: StoreUsage
  images: number
  jobs: { running: number, total: number }
}

export interface VerifyResult {
  id: string
  ok: boolean
  blocks: number
  badBlocks: number[]
}

export interface ExportResult {
  id: string
  path: string
  format: 'raw' | 'qcow2'
  bytes: number
}

export interface FleetInfo {
  configured: boolean
  // This host's key: give it to other hosts' `osfarmctl fleet allow`.
  publicKey: string
  allow: string[]
  bootstrap: string[]
  peers: string[]
  topic: string | null
  // Where this host's DHT node listens (others may list it as a bootstrap node).
  dht: { host: string, port: number } | null
  // The TCP port this host takes block lanes on (null: none; lanes off, or no swarm open).
  lanePort: number | null
  // Sessions this host keeps at most.
  maxPeers: number
  // Upload limits in bytes per second, all peers and each peer (0: none).
  uploadLimit: number
  peerUploadLimit: number
  // Only in the answer to fleet.init: give it to the hosts that join.
  secret?: string
}

export interface PeerInfo {
  key: string
  host: string
  address: string
  images: number
  partial: number
  bytesIn: number
  bytesOut: number
  rateIn: number
  connectedAt: string
  // The TCP lane that carries block traffic with this peer (bytes of it, part of bytesIn and
  // bytesOut); null while blocks go over the swarm connection.
  lane: { address: string, bytesIn: number, bytesOut: number } | null
}

export interface TransferPeerStats {
  host: string
  blocks: number
  rawBytes: number
  wireBytes: number
}

export interface TransferStats {
  blocks: number
  zeroBlocks: number
  inPlace: number
  copiedLocal: number
  received: number
  resumed: number
  rawBytes: number
  wireBytes: number
  manifestBytes: number
  badBlocks: number
  droppedPeers: string[]
  peers: Record<string, TransferPeerStats>
  elapsedMs: number
  rate: number
  // Milliseconds per phase: manifest, plan (snapshot included), transfer, register.
  phases: Record<string, number>
  // Milliseconds of the transfer phase until the last remote block arrived.
  remoteMs: number
  // Of copiedLocal, blocks cloned as shared extents (reflink) rather than read and written.
  clonedLocal?: number
}

// image.build: a spec's text (with its format, else guessed) or the path of a spec file on the
// daemon's host. The job's result is a BuildResultInfo.
export type BuildParams = Params<'image.build'>

// image.check (build SPEC --check): whether the spec's image is behind its repositories, and
// which layers a build would make, without building.
export interface BuildCheckResult {
  name: string
  key: string
  specKey: string
  // The version of that name whose content the spec gives now, if any, and the newest.
  current: ImageInfo | null
  newest: ImageInfo | null
  upToDate: boolean
  layers: Array<{ index: number, step: string, key: string, cached: boolean }>
  // Repository states that differ from the newest version's.
  changed: RepoChange[]
  warnings: string[]
}

export interface RepoChange {
  uri: string
  suite: string
  was: string
  now: string
  layer: number
}

// image.outdated: each built image name's newest version against its repositories now.
export interface OutdatedInfo {
  image: ImageInfo
  outdated: boolean
  changed: RepoChange[]
  // Steps a rebuild would redo (from the lowest layer that read a changed repository up).
  rebuild: string[]
  warnings: string[]
}

// Rebuild policies: osfarmd builds a spec again in the background, every `everySeconds` and/or
// when a repository it reads changes (checked every `checkSeconds`).
export type RebuildPolicyParams = Params<'rebuild.add'>

export interface RebuildPolicy {
  id: string
  name: string
  everySeconds: number | null
  onChange: boolean
  createdAt: string
  // The rights of the caller that made it: the background builds are checked against them.
  rights: Rights
  lastRun: string | null
  lastResult: string | null
  lastVersion: number | null
  nextRun: string | null
  running: string | null
}

export type ExportFormat = 'raw' | 'qcow2'

// A job whose bytes travel on a stream: attach to `stream` (protocol/stream.ts).
export interface StreamJob {
  job: JobInfo
  stream: string
}

export interface SpecSource {
  // The spec field, e.g. "files[2].source" or "rootfs".
  field: string
  // Absolute, resolved against baseDir.
  path: string
}

export interface SourceInfo {
  blake3: string
  size: number
}

export interface BuildLayerInfo {
  key: string
  step: string
  cached: boolean
  seconds: number
}

export interface BuildResultInfo {
  image: ImageInfo
  key: string
  layers: BuildLayerInfo[]
  // Every layer came from the cache.
  cached: boolean
  // e.g. "mirror unreachable (…): cached image from DATE".
  warnings?: string[]
}

export interface FetchResult {
  image: ImageInfo
  stats: TransferStats | undefined
  alreadyPresent: boolean
  // A fetch into a volume that is not registered as an image (pre-staging): `image` then only
  // describes the content, and this names the committed volume.
  volume?: string
}

export interface MetricSample {
  labels: Record<string, string>
  value: number
}

export interface MetricFamily {
  name: string
  help: string
  type: 'counter' | 'gauge'
  samples: MetricSample[]
}

// Where a daemon that limits writes to root serves them: mode 0600, next to the main socket.
export function adminSocketPath (socket: string): string {
  return socket.replace(/(\.sock)?$/, '-admin.sock')
}

// package.search: packages of one repository's Packages index whose name (first) or short
// description matches the query; for the spec editor.
export interface PackageSummary {
  name: string
  version: string
  section: string
  // KiB, as the index gives it.
  installedSize: number
  description: string
}

export interface PackageSearchResult {
  uri: string
  suite: string
  component: string
  arch: string
  // Packages in the index, and how many matched (at most `limit` are listed).
  total: number
  matches: number
  packages: PackageSummary[]
}

// spec.check: a spec's layer plan without building it; a bad spec is a SPEC_INVALID error whose
// data.issues name each field (and XML line).
export interface SpecCheckResult {
  name: string
  key: string
  layers: Array<{ key: string, step: string, cached: boolean }>
}

// fleet.images: what peers advertise, by root, with the peers that hold each.
export interface FleetImage {
  root: string
  name: string
  size: number
  // The builder's labels, as its newest advert carries them.
  labels: string[]
  holders: Array<{ key: string, host: string }>
}

export * from './seed.js'
export * from './prestage.js'

// Methods, their params and results: declared once in api.ts (which the daemon's checks use too).
export type { MethodName, Methods, Params, ParamsOf, Result } from './api.js'

export interface Notifications {
  'job.progress': JobInfo
  'job.log': { id: string, line: string }
}
