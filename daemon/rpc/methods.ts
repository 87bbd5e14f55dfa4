// The local API's one method table. Each entry declares its params, whether it changes state
// (`write`: may be limited to root), and a handler that delegates to a service.

import type { MethodName, Params, Result, Rights } from '../../protocol/rpc.js'
import { API_VERSION } from '../../protocol/rpc.js'
import type { ParamSpec } from './params.js'
import type { Services } from '../services.js'
import type { JobEvent } from '../jobs/jobs.js'
import { checkSpec } from '../console/spec-check.js'
import { fleetImages } from '../console/fleet-images.js'
import { splitLabels } from '../images/labels.js'
import { hostUrlReason } from '../build/sources.js'

export interface CallContext {
  // Sends a JSON-RPC notification to the calling connection.
  notify (method: string, params: unknown): void
  // Aborted when the calling connection closes.
  signal: AbortSignal
  rights: Rights
}

export interface MethodEntry<M extends MethodName> {
  params: ParamSpec
  write: boolean
  // Why this call needs root (it names a host path or changes the host's trust), if it does.
  admin?: (params: Params<M>) => string | undefined
  handler (params: Params<M>, ctx: CallContext): Promise<Result<M>> | Result<M>
}

export type MethodTable = { [M in MethodName]: MethodEntry<M> }

const id = { id: { type: 'string' } } as const

export function methodTable (d: Services): MethodTable {
  return {
    'daemon.status': { params: {}, write: false, handler: () => d.status() },
    'daemon.version': { params: {}, write: false, handler: (_, ctx) => ({ version: d.version, apiVersion: API_VERSION, rights: ctx.rights }) },
    'daemon.stats': { params: {}, write: false, handler: () => d.metrics.snapshot() },
    'image.list': { params: {}, write: false, handler: () => d.images.list() },
    'image.get': { params: id, write: false, handler: p => d.images.get(p.id) },
    'image.build': {
      params: { spec: { type: 'string', optional: true }, path: { type: 'string', optional: true }, format: { type: ['xml', 'json'], optional: true }, baseDir: { type: 'string', optional: true }, name: { type: 'string', optional: true }, labels: { type: 'string', optional: true }, sources: { type: 'object', optional: true }, snapshot: { type: 'string', optional: true } },
      write: true,
      admin: p => p.path === undefined ? undefined : 'path: osfarmd reads a spec file only for root; send the spec text (osfarmctl build does)',
      handler: (p, ctx) => d.builds.build(p, ctx.rights)
    },
    'image.import': {
      params: { path: { type: 'string' }, name: { type: 'string' }, labels: { type: 'string', optional: true } },
      write: true,
      admin: () => 'path: osfarmd opens host paths only for root; osfarmctl image import streams the file with your own rights',
      handler: p => d.images.import(p.path, p.name, p.labels === undefined ? undefined : splitLabels(p.labels))
    },
    'image.upload': {
      params: { name: { type: 'string' }, size: { type: 'number' }, labels: { type: 'string', optional: true } },
      write: true,
      handler: p => d.images.upload(p.name, p.size, p.labels === undefined ? undefined : splitLabels(p.labels))
    },
    'image.export': {
      params: { ...id, path: { type: 'string' }, format: { type: ['raw', 'qcow2'], optional: true } },
      write: true,
      admin: () => 'path: osfarmd writes host paths only for root; osfarmctl image export streams the image and writes it with your own rights',
      handler: p => d.images.export(p.id, p.path, p.format ?? 'raw')
    },
    // Read-only: the caller gets bytes it could fetch or list anyway.
    'image.download': {
      params: { ...id, format: { type: ['raw', 'qcow2'], optional: true } },
      write: false,
      handler: p => d.images.download(p.id, p.format ?? 'raw')
    },
    'source.upload': { params: { size: { type: 'number' } }, write: true, handler: p => d.builds.sources.upload(p.size) },
    'spec.sources': {
      params: { spec: { type: 'string' }, format: { type: ['xml', 'json'], optional: true }, baseDir: { type: 'string', optional: true } },
      write: false,
      handler: p => d.builds.specSources(p.spec, p.format, p.baseDir)
    },
    'image.remove': { params: id, write: true, handler: p => d.images.remove(p.id) },
    'image.label': {
      params: { ...id, set: { type: 'string', optional: true }, remove: { type: 'string', optional: true } },
      write: true,
      handler: p => d.adverts.relabel(p.id, { set: splitLabels(p.set ?? ''), remove: splitLabels(p.remove ?? '') })
    },
    'image.verify': { params: id, write: false, handler: p => d.images.verify(p.id) },
    'job.get': { params: id, write: false, handler: p => d.jobs.get(p.id) },
    'job.list': { params: {}, write: false, handler: () => d.jobs.list() },
    'job.cancel': { params: id, write: true, handler: p => d.jobs.cancel(p.id) },
    'job.watch': {
      params: id,
      write: false,
      handler: (p, ctx) => d.jobs.watch(p.id, (e: JobEvent) => {
        if (e.type === 'progress') ctx.notify('job.progress', e.job)
        else ctx.notify('job.log', { id: e.id, line: e.line })
      }, ctx.signal)
    },
    'image.fetch': {
      params: { ref: { type: 'string' }, from: { type: 'string', optional: true }, name: { type: 'string', optional: true }, wait: { type: 'number', optional: true }, limit: { type: 'number', optional: true } },
      write: true,
      handler: p => d.fetches.fetch(p.ref, { from: p.from, name: p.name, peerWaitMs: p.wait, limit: p.limit })
    },
    'fleet.init': {
      params: { secret: { type: 'string', optional: true }, bootstrap: { type: 'string', optional: true }, peers: { type: 'string', optional: true }, dhtHost: { type: 'string', optional: true }, dhtPort: { type: 'number', optional: true }, uploadLimit: { type: 'number', optional: true }, peerUploadLimit: { type: 'number', optional: true } },
      write: true,
      admin: () => 'the fleet (its secret, bootstrap nodes and allow-list) is the host\'s trust: root only',
      handler: p => d.fleet.init({ ...p, bootstrap: commaList(p.bootstrap), peers: commaList(p.peers) })
    },
    'fleet.show': { params: {}, write: false, handler: () => d.fleet.show() },
    'fleet.allow': { params: { key: { type: 'string' } }, write: true, admin: () => 'the fleet\'s allow-list is the host\'s trust: root only', handler: p => d.fleet.allow(p.key, true) },
    'fleet.deny': { params: { key: { type: 'string' } }, write: true, admin: () => 'the fleet\'s allow-list is the host\'s trust: root only', handler: p => d.fleet.allow(p.key, false) },
    'peer.list': { params: {}, write: false, handler: () => d.fleet.peers() },
    'package.search': {
      params: { query: { type: 'string' }, suite: { type: 'string' }, uri: { type: 'string', optional: true }, component: { type: 'string', optional: true }, arch: { type: 'string', optional: true }, limit: { type: 'number', optional: true } },
      write: false,
      admin: p => p.uri === undefined ? undefined : hostUrlReason('uri', p.uri),
      handler: p => d.packages.search(p)
    },
    // Planning hashes the sources a spec names: as guarded as image.build.
    'spec.check': {
      params: { spec: { type: 'string' }, format: { type: ['xml', 'json'], optional: true }, baseDir: { type: 'string', optional: true }, sources: { type: 'object', optional: true } },
      write: true,
      handler: (p, ctx) => checkSpec(d.builds, d.store, p, ctx.rights)
    },
    'fleet.images': { params: {}, write: false, handler: () => fleetImages(d.fleet.swarm) },
    // Plans the spec (hashing its sources, checking its repositories): as guarded as image.build.
    'image.check': {
      params: { spec: { type: 'string', optional: true }, path: { type: 'string', optional: true }, format: { type: ['xml', 'json'], optional: true }, baseDir: { type: 'string', optional: true }, name: { type: 'string', optional: true }, labels: { type: 'string', optional: true }, sources: { type: 'object', optional: true }, snapshot: { type: 'string', optional: true } },
      write: true,
      admin: p => p.path === undefined ? undefined : 'path: osfarmd reads a spec file only for root; send the spec text (osfarmctl build does)',
      handler: (p, ctx) => d.builds.check(p, ctx.rights)
    },
    'image.outdated': { params: {}, write: false, handler: () => d.builds.outdated() },
    // A policy keeps its creator's rights; each background build is checked against them.
    'rebuild.add': {
      params: { spec: { type: 'string' }, format: { type: ['xml', 'json'], optional: true }, baseDir: { type: 'string', optional: true }, name: { type: 'string', optional: true }, labels: { type: 'string', optional: true }, sources: { type: 'object', optional: true }, everySeconds: { type: 'number', optional: true }, onChange: { type: 'boolean', optional: true } },
      write: true,
      handler: (p, ctx) => d.rebuilds.add(p, ctx.rights)
    },
    'rebuild.list': { params: {}, write: false, handler: () => d.rebuilds.list() },
    'rebuild.remove': { params: id, write: true, handler: p => d.rebuilds.remove(p.id) },
    'seed.add': {
      params: { match: { type: 'string' }, label: { type: 'string', optional: true }, keep: { type: 'number', optional: true }, maxSize: { type: 'number', optional: true }, priority: { type: 'number', optional: true }, uploadLimit: { type: 'number', optional: true }, downloadLimit: { type: 'number', optional: true }, fleet: { type: 'boolean', optional: true } },
      write: true,
      admin: p => p.fleet ? 'fleet: a fleet-wide policy is signed by this host for every host: root only' : undefined,
      handler: p => d.seeds.add(p)
    },
    'seed.list': { params: {}, write: false, handler: () => d.seeds.list() },
    'seed.remove': { params: id, write: true, handler: p => d.seeds.remove(p.id) },
    'seed.status': { params: {}, write: false, handler: () => d.seeds.status() },
    'seed.cap': { params: { bytes: { type: 'number' } }, write: true, admin: () => 'the seeding cap is the host\'s disk budget: root only', handler: p => d.seeds.setCap(p.bytes) },
    'prestage.start': {
      params: { disk: { type: 'string' }, to: { type: 'string' }, base: { type: 'string', optional: true } },
      write: true,
      admin: () => 'disk: osfarmd opens host disks only for root (run osfarmctl prestage as root)',
      handler: p => d.prestages.begin(p)
    },
    'prestage.sync': { params: id, write: true, handler: p => d.prestages.sync(p.id) },
    'prestage.list': { params: {}, write: false, handler: () => d.prestages.list() },
    'prestage.get': { params: id, write: false, handler: p => d.prestages.get(p.id) },
    'prestage.cancel': { params: id, write: true, handler: p => d.prestages.cancel(p.id) }
  }
}

// A comma-joined list (absent or empty: none given).
function commaList (s: string | undefined): string[] | undefined {
  return s ? s.split(',').map(x => x.trim()).filter(Boolean) : undefined
}
