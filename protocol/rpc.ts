// The local API: JSON-RPC 2.0 method names, their params and results, and the notifications the
// daemon pushes. Shared by osfarmd and osfarmctl; fields are only ever appended.

export const API_VERSION = 1

// A frame is one line of JSON; anything longer is refused without being parsed.
export const MAX_FRAME_BYTES = 1 << 20

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
  // "key=value" labels, set by the builder (import --label) and carried in its signed advert.
  labels?: string[]
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
}

// image.build: a spec's text (with its format, else guessed) or the path of a spec file on the
// daemon's host. The job's result is a BuildResultInfo.
export interface BuildParams {
  spec?: string
  path?: string
  format?: 'xml' | 'json'
  // Where a spec text's relative file sources are found (absolute); a path's own directory by default.
  baseDir?: string
  // The image's name; the spec's name by default.
  name?: string
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
  holders: Array<{ key: string, host: string }>
}

// One entry per method: params and result types. The daemon's table and the typed client are
// both checked against this map.
export interface Methods {
  'daemon.status': { params: Record<string, never>, result: DaemonStatus }
  'daemon.version': { params: Record<string, never>, result: { version: string, apiVersion: number } }
  'daemon.stats': { params: Record<string, never>, result: MetricFamily[] }
  'image.list': { params: Record<string, never>, result: ImageInfo[] }
  'image.get': { params: { id: string }, result: ImageInfo }
  // labels: "key=value,key=value" (values without commas).
  'image.import': { params: { path: string, name: string, labels?: string }, result: JobInfo }
  // Builds an image from a spec (layers cached by key); the job's result is a BuildResultInfo.
  'image.build': { params: BuildParams, result: JobInfo }
  'image.export': { params: { id: string, path: string, format?: 'raw' | 'qcow2' }, result: JobInfo }
  'image.remove': { params: { id: string }, result: { id: string, removed: boolean } }
  'image.verify': { params: { id: string }, result: JobInfo }
  'job.get': { params: { id: string }, result: JobInfo }
  'job.list': { params: Record<string, never>, result: JobInfo[] }
  'job.cancel': { params: { id: string }, result: JobInfo }
  // Resolves when the job ends; meanwhile the daemon sends `job.progress` notifications.
  'job.watch': { params: { id: string }, result: JobInfo }
  // Fetches an image (by root, or by a name peers advertise) from the fleet; the job's result is a FetchResult.
  'image.fetch': { params: { ref: string, from?: string, name?: string, wait?: number }, result: JobInfo }
  'fleet.init': { params: { secret?: string, bootstrap?: string, peers?: string, dhtHost?: string, dhtPort?: number, uploadLimit?: number, peerUploadLimit?: number }, result: FleetInfo }
  'fleet.show': { params: Record<string, never>, result: FleetInfo }
  'fleet.allow': { params: { key: string }, result: FleetInfo }
  'fleet.deny': { params: { key: string }, result: FleetInfo }
  'peer.list': { params: Record<string, never>, result: PeerInfo[] }
  'package.search': { params: { query: string, suite: string, uri?: string, component?: string, arch?: string, limit?: number }, result: PackageSearchResult }
  'spec.check': { params: { spec: string, format?: 'xml' | 'json' }, result: SpecCheckResult }
  'fleet.images': { params: Record<string, never>, result: FleetImage[] }
}

export type MethodName = keyof Methods
export type Params<M extends MethodName> = Methods[M]['params']
export type Result<M extends MethodName> = Methods[M]['result']

export interface Notifications {
  'job.progress': JobInfo
  'job.log': { id: string, line: string }
}
