// The local API's contract, declared once: each method's params (their checks at run time and
// their types at compile time both come from here), its result type and whether it changes
// state (`write`: may be limited to root). The daemon's method table adds only handlers and
// the `admin` rule (daemon/rpc/methods.ts); osfarmctl and the web console call with these types.

import type {
  BuildCheckResult, DaemonStatus, FleetImage, FleetInfo, ImageInfo, JobInfo, MetricFamily, OutdatedInfo,
  PackageSearchResult, PeerInfo, RebuildPolicy, Rights, SpecCheckResult, SpecSource, StreamJob
} from './rpc.js'
import type { SeedPolicy, SeedStatus } from './seed.js'
import type { PrestageInfo } from './prestage.js'

// ---- the field vocabulary ----

export type FieldType = 'string' | 'number' | 'boolean' | 'object' | readonly string[]
// `array`: a list of values of `type` (strings: each non-empty). `of` only types an object.
export interface FieldSpec { readonly type: FieldType, readonly optional?: boolean, readonly array?: boolean, readonly of?: unknown }
export type ParamSpec = Readonly<Record<string, FieldSpec>>

const str = { type: 'string' } as const
const num = { type: 'number' } as const
const bool = { type: 'boolean' } as const
function opt<F extends FieldSpec> (f: F): F & { readonly optional: true } { return { ...f, optional: true } }
function list<F extends FieldSpec> (f: F): F & { readonly array: true } { return { ...f, array: true } }
function oneOf<const E extends readonly string[]> (...values: E): { readonly type: E } { return { type: values } }
function obj<T> (): { readonly type: 'object', readonly of: T } { return { type: 'object' } as { type: 'object', of: T } }
function result<T> (): T { return undefined as T }

type Base<F> = F extends { of: infer T } ? T
  : F extends { type: readonly (infer E)[] } ? E
    : F extends { type: 'string' } ? string
      : F extends { type: 'number' } ? number
        : F extends { type: 'boolean' } ? boolean
          : Record<string, unknown>
type Value<F> = F extends { array: true } ? Array<Base<F>> : Base<F>
type Simplify<T> = { [K in keyof T]: T[K] }
export type ParamsOf<S extends ParamSpec> = Simplify<
  { -readonly [K in keyof S as S[K] extends { optional: true } ? never : K]: Value<S[K]> } &
  { -readonly [K in keyof S as S[K] extends { optional: true } ? K : never]?: Value<S[K]> }
>

interface Contract { readonly params: ParamSpec, readonly write: boolean, readonly result: unknown }

const id = { id: str } as const
const none = {} as const
const specFormat = opt(oneOf('xml', 'json'))
const exportFormat = opt(oneOf('raw', 'qcow2'))
// image.build and image.check: a spec (text, or a host path for root) and what overrides it.
const buildParams = {
  spec: opt(str),
  path: opt(str),
  format: specFormat,
  // Where a spec text's relative file sources are found (absolute); a path's own directory by default.
  baseDir: opt(str),
  // The image's name; the spec's name by default.
  name: opt(str),
  // key=value each: each replaces the spec's labels with its key.
  labels: opt(list(str)),
  // Uploaded sources (source.upload) by the absolute path the spec names: path → blake3. Callers
  // other than root must upload every source their spec names.
  sources: opt(obj<Record<string, string>>()),
  // Overrides the spec's `snapshot`: "offline", or a point in time (ISO 8601) whose repository
  // states this host saw.
  snapshot: opt(str)
} as const

export const API = {
  'daemon.status': { params: none, write: false, result: result<DaemonStatus>() },
  // `rights`: what this connection may do.
  'daemon.version': { params: none, write: false, result: result<{ version: string, apiVersion: number, rights: Rights }>() },
  'daemon.stats': { params: none, write: false, result: result<MetricFamily[]>() },
  'image.list': { params: none, write: false, result: result<ImageInfo[]>() },
  'image.get': { params: id, write: false, result: result<ImageInfo>() },
  // Builds an image from a spec (layers cached by key); the job's result is a BuildResultInfo.
  'image.build': { params: buildParams, write: true, result: result<JobInfo>() },
  // Copies a host file in (root only: osfarmd opens `path`). labels: key=value each.
  'image.import': { params: { path: str, name: str, labels: opt(list(str)) }, write: true, result: result<JobInfo>() },
  // The same, with the bytes streamed by the caller (protocol/stream.ts) on the returned stream.
  'image.upload': { params: { name: str, size: num, labels: opt(list(str)) }, write: true, result: result<StreamJob>() },
  // Writes an image to a host file (root only: osfarmd opens `path`).
  'image.export': { params: { ...id, path: str, format: exportFormat }, write: true, result: result<JobInfo>() },
  // Streams an image to the caller: raw (holes never sent) or converted; the job's result is an
  // ExportResult. Read-only: the caller gets bytes it could fetch or list anyway.
  'image.download': { params: { ...id, format: exportFormat }, write: false, result: result<StreamJob>() },
  // A spec's source file (files[].source, rootfs), streamed; its RESULT is a SourceInfo, named in image.build's `sources`.
  'source.upload': { params: { size: num }, write: true, result: result<{ stream: string }>() },
  // The host files a spec names (files[].source, rootfs), each with its field, for a caller to upload.
  'spec.sources': { params: { spec: str, format: specFormat, baseDir: opt(str) }, write: false, result: result<SpecSource[]>() },
  'image.remove': { params: id, write: true, result: result<{ id: string, removed: boolean }>() },
  // Sets labels (`set`: key=value each; a key replaces that key's labels) and removes others
  // (`remove`: a key or key=value each), on the builder host only; the new advert reaches the fleet.
  'image.label': { params: { ...id, set: opt(list(str)), remove: opt(list(str)) }, write: true, result: result<ImageInfo>() },
  'image.verify': { params: id, write: false, result: result<JobInfo>() },
  'job.get': { params: id, write: false, result: result<JobInfo>() },
  'job.list': { params: none, write: false, result: result<JobInfo[]>() },
  'job.cancel': { params: id, write: true, result: result<JobInfo>() },
  // Resolves when the job ends; meanwhile the daemon sends `job.progress` notifications.
  'job.watch': { params: id, write: false, result: result<JobInfo>() },
  // Fetches an image (by root, or by a name peers advertise) from the fleet; the job's result is
  // a FetchResult. `wait`: ms to wait for holders; `limit`: bytes per second received at most.
  'image.fetch': { params: { ref: str, from: opt(str), name: opt(str), wait: opt(num), limit: opt(num) }, write: true, result: result<JobInfo>() },
  'fleet.init': {
    params: { secret: opt(str), bootstrap: opt(list(str)), peers: opt(list(str)), dhtHost: opt(str), dhtPort: opt(num), tcpLanes: opt(bool), tcpPort: opt(num), maxPeers: opt(num), uploadLimit: opt(num), peerUploadLimit: opt(num) },
    write: true,
    result: result<FleetInfo>()
  },
  'fleet.show': { params: none, write: false, result: result<FleetInfo>() },
  'fleet.allow': { params: { key: str }, write: true, result: result<FleetInfo>() },
  'fleet.deny': { params: { key: str }, write: true, result: result<FleetInfo>() },
  'peer.list': { params: none, write: false, result: result<PeerInfo[]>() },
  'package.search': { params: { query: str, suite: str, uri: opt(str), component: opt(str), arch: opt(str), limit: opt(num) }, write: false, result: result<PackageSearchResult>() },
  // Planning hashes the sources a spec names: as guarded as image.build.
  'spec.check': { params: { spec: str, format: specFormat, baseDir: opt(str), sources: opt(obj<Record<string, string>>()) }, write: true, result: result<SpecCheckResult>() },
  'fleet.images': { params: none, write: false, result: result<FleetImage[]>() },
  // Which layers of a spec's image are behind its repositories (no build); plans the spec, so
  // as guarded as image.build.
  'image.check': { params: buildParams, write: true, result: result<BuildCheckResult>() },
  'image.outdated': { params: none, write: false, result: result<OutdatedInfo[]>() },
  'rebuild.add': {
    params: { spec: str, format: specFormat, baseDir: opt(str), name: opt(str), labels: opt(list(str)), sources: opt(obj<Record<string, string>>()), everySeconds: opt(num), onChange: opt(bool) },
    write: true,
    result: result<RebuildPolicy>()
  },
  'rebuild.list': { params: none, write: false, result: result<RebuildPolicy[]>() },
  'rebuild.remove': { params: id, write: true, result: result<{ id: string, removed: boolean }>() },
  // Which images a host holds ahead of need. An advert matches when its name matches `match` (a
  // glob: * and ?) and, with `label` ("key=glob"), one of its labels does; of the matches, the
  // `keep` newest are held, those over `maxSize` bytes never. `priority`: higher goes first among
  // seed fetches. `uploadLimit`/`downloadLimit`: bytes per second (0 or absent: none). `fleet`:
  // publish as a fleet-wide default.
  'seed.add': {
    params: { match: str, label: opt(str), keep: opt(num), maxSize: opt(num), priority: opt(num), uploadLimit: opt(num), downloadLimit: opt(num), fleet: opt(bool) },
    write: true,
    result: result<SeedPolicy>()
  },
  'seed.list': { params: none, write: false, result: result<SeedPolicy[]>() },
  // Removes a policy; images only it wanted are released.
  'seed.remove': { params: id, write: true, result: result<{ id: string, removed: boolean }>() },
  'seed.status': { params: none, write: false, result: result<SeedStatus>() },
  // Caps the bytes seeding may hold here (0: no cap).
  'seed.cap': { params: { bytes: num }, write: true, result: result<{ cap: number | null }>() },
  // Pre-staging: start and sync return jobs whose results are PrestageInfo (they end once the
  // target holds the point). `base`: the image the disk was made from (name, id or root).
  'prestage.start': { params: { disk: str, to: str, base: opt(str) }, write: true, result: result<JobInfo>() },
  'prestage.sync': { params: id, write: true, result: result<JobInfo>() },
  'prestage.list': { params: none, write: false, result: result<PrestageInfo[]>() },
  'prestage.get': { params: id, write: false, result: result<PrestageInfo>() },
  'prestage.cancel': { params: id, write: true, result: result<PrestageInfo>() }
} as const satisfies Record<string, Contract>

export type MethodName = keyof typeof API
export type Params<M extends MethodName> = ParamsOf<typeof API[M]['params']>
export type Result<M extends MethodName> = typeof API[M]['result']
export type Methods = { [M in MethodName]: { params: Params<M>, result: Result<M> } }
