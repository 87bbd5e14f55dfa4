// The local API: JSON-RPC 2.0 method names, their params and results, and the notifications the
// daemon pushes. Shared by osfarmd and osfarmctl; fields are only ever appended.

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
  // Milliseconds per phase: manifest, plan (snapshot included), transfer, verify, register.
  phases: Record<string, number>
  // Milliseconds of the transfer phase until the last remote block arrived.
  remoteMs: number
  // Of copiedLocal, blocks cloned as shared extents (reflink) rather than read and written.
  clonedLocal?: number
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
  // "key=value,key=value": each replaces the spec's labels with its key.
  labels?: string
  // Uploaded sources (source.upload) by the absolute path the spec names: path → blake3. Callers
  // other than root must upload every source their spec names.
  sources?: Record<string, string>
  // Overrides the spec's `snapshot`: "offline", or a point in time (ISO 8601) whose repository
  // states this host saw.
  snapshot?: string
}

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
export interface RebuildPolicyParams {
  spec: string
  format?: 'xml' | 'json'
  baseDir?: string
  name?: string
  labels?: string
  sources?: Record<string, string>
  everySeconds?: number
  onChange?: boolean
}

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
import type { SeedPolicy, SeedPolicyParams, SeedStatus } from './seed.js'
import type { PrestageInfo, PrestageStartParams } from './prestage.js'

// One entry per method: params and result types. The daemon's table and the typed client are
// both checked against this map.
export interface Methods {
  'daemon.status': { params: Record<string, never>, result: DaemonStatus }
  // `rights`: what this connection may do.
  'daemon.version': { params: Record<string, never>, result: { version: string, apiVersion: number, rights: Rights } }
  'daemon.stats': { params: Record<string, never>, result: MetricFamily[] }
  'image.list': { params: Record<string, never>, result: ImageInfo[] }
  'image.get': { params: { id: string }, result: ImageInfo }
  // labels: "key=value,key=value" (values without commas).
  // Copies a host file in (root only: osfarmd opens `path`).
  'image.import': { params: { path: string, name: string, labels?: string }, result: JobInfo }
  // The same, with the bytes streamed by the caller (protocol/stream.ts) on the returned stream.
  'image.upload': { params: { name: string, size: number, labels?: string }, result: StreamJob }
  // Streams an image to the caller: raw (holes never sent) or converted; the job's result is an ExportResult.
  'image.download': { params: { id: string, format?: ExportFormat }, result: StreamJob }
  // A spec's source file (files[].source, rootfs), streamed; its RESULT is a SourceInfo, named in image.build's `sources`.
  'source.upload': { params: { size: number }, result: { stream: string } }
  // The host files a spec names (files[].source, rootfs), each with its field, for a caller to upload.
  'spec.sources': { params: { spec: string, format?: 'xml' | 'json', baseDir?: string }, result: SpecSource[] }
  // Builds an image from a spec (layers cached by key); the job's result is a BuildResultInfo.
  'image.build': { params: BuildParams, result: JobInfo }
  // Writes an image to a host file (root only: osfarmd opens `path`).
  'image.export': { params: { id: string, path: string, format?: ExportFormat }, result: JobInfo }
  'image.remove': { params: { id: string }, result: { id: string, removed: boolean } }
  // Sets labels (`set`: "key=value,..."; a key replaces that key's labels) and removes others
  // (`remove`: "key,key=value,..."), on the builder host only; the new advert reaches the fleet.
  'image.label': { params: { id: string, set?: string, remove?: string }, result: ImageInfo }
  'image.verify': { params: { id: string }, result: JobInfo }
  'job.get': { params: { id: string }, result: JobInfo }
  'job.list': { params: Record<string, never>, result: JobInfo[] }
  'job.cancel': { params: { id: string }, result: JobInfo }
  // Resolves when the job ends; meanwhile the daemon sends `job.progress` notifications.
  'job.watch': { params: { id: string }, result: JobInfo }
  // Fetches an image (by root, or by a name peers advertise) from the fleet; the job's result is a FetchResult.
  // `limit`: bytes per second this fetch receives at most.
  'image.fetch': { params: { ref: string, from?: string, name?: string, wait?: number, limit?: number }, result: JobInfo }
  'fleet.init': { params: { secret?: string, bootstrap?: string, peers?: string, dhtHost?: string, dhtPort?: number, uploadLimit?: number, peerUploadLimit?: number }, result: FleetInfo }
  'fleet.show': { params: Record<string, never>, result: FleetInfo }
  'fleet.allow': { params: { key: string }, result: FleetInfo }
  'fleet.deny': { params: { key: string }, result: FleetInfo }
  'peer.list': { params: Record<string, never>, result: PeerInfo[] }
  'package.search': { params: { query: string, suite: string, uri?: string, component?: string, arch?: string, limit?: number }, result: PackageSearchResult }
  'spec.check': { params: { spec: string, format?: 'xml' | 'json', baseDir?: string, sources?: Record<string, string> }, result: SpecCheckResult }
  'fleet.images': { params: Record<string, never>, result: FleetImage[] }
  // Which layers of a spec's image are behind its repositories (no build).
  'image.check': { params: BuildParams, result: BuildCheckResult }
  'image.outdated': { params: Record<string, never>, result: OutdatedInfo[] }
  'rebuild.add': { params: RebuildPolicyParams, result: RebuildPolicy }
  'rebuild.list': { params: Record<string, never>, result: RebuildPolicy[] }
  'rebuild.remove': { params: { id: string }, result: { id: string, removed: boolean } }
  'seed.add': { params: SeedPolicyParams, result: SeedPolicy }
  'seed.list': { params: Record<string, never>, result: SeedPolicy[] }
  // Removes a policy; images only it wanted are released.
  'seed.remove': { params: { id: string }, result: { id: string, removed: boolean } }
  'seed.status': { params: Record<string, never>, result: SeedStatus }
  // Caps the bytes seeding may hold here (0: no cap).
  'seed.cap': { params: { bytes: number }, result: { cap: number | null } }
  // Pre-staging: start and sync return jobs whose results are PrestageInfo (they end once the
  // target holds the point).
  'prestage.start': { params: PrestageStartParams, result: JobInfo }
  'prestage.sync': { params: { id: string }, result: JobInfo }
  'prestage.list': { params: Record<string, never>, result: PrestageInfo[] }
  'prestage.get': { params: { id: string }, result: PrestageInfo }
  'prestage.cancel': { params: { id: string }, result: PrestageInfo }
}

export type MethodName = keyof Methods
export type Params<M extends MethodName> = Methods[M]['params']
export type Result<M extends MethodName> = Methods[M]['result']

export interface Notifications {
  'job.progress': JobInfo
  'job.log': { id: string, line: string }
}
