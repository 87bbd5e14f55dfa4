// The local API's one method table. Params, result and `write` (may be limited to root) come
// from the contract (protocol/api.ts); each entry here adds the `admin` rule, why a call needs
// root if it does (the trust boundary: README, "Who may do what"), and a handler that delegates
// to a service.

import type { MethodName, Params, Result, Rights } from '../../protocol/rpc.js'
import { API_VERSION } from '../../protocol/rpc.js'
import { API, type ParamSpec } from '../../protocol/api.js'
import type { Services } from '../services.js'
import type { JobEvent } from '../jobs/jobs.js'
import { checkSpec } from '../console/spec-check.js'
import { fleetImages } from '../console/fleet-images.js'
import { hostUrlReason } from '../builder/sources.js'

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
type Handlers = { [M in MethodName]: Omit<MethodEntry<M>, 'params' | 'write'> }

export function methodTable (d: Services): MethodTable {
  const table: Record<string, unknown> = {}
  for (const [name, entry] of Object.entries(handlers(d))) {
    const c = API[name as MethodName]
    table[name] = { ...entry, params: c.params, write: c.write }
  }
  return table as MethodTable
}

function handlers (d: Services): Handlers {
  return {
    'daemon.status': { handler: () => d.status() },
    'daemon.version': { handler: (_, ctx) => ({ version: d.version, apiVersion: API_VERSION, rights: ctx.rights }) },
    'daemon.stats': { handler: () => d.metrics.snapshot() },
    'image.list': { handler: () => d.images.list() },
    'image.get': { handler: p => d.images.get(p.id) },
    'image.build': {
      admin: p => p.path === undefined ? undefined : 'path: osfarmd reads a spec file only for root; send the spec text (osfarmctl build does)',
      handler: (p, ctx) => d.builds.build(p, ctx.rights)
    },
    'image.import': {
      admin: () => 'path: osfarmd opens host paths only for root; osfarmctl image import streams the file with your own rights',
      handler: p => d.images.import(p.path, p.name, p.labels)
    },
    'image.upload': {
      handler: p => d.images.upload(p.name, p.size, p.labels)
    },
    'image.export': {
      admin: () => 'path: osfarmd writes host paths only for root; osfarmctl image export streams the image and writes it with your own rights',
      handler: p => d.images.export(p.id, p.path, p.format ?? 'raw')
    },
    'image.download': {
      handler: p => d.images.download(p.id, p.format ?? 'raw')
    },
    'source.upload': { handler: p => d.builds.sources.upload(p.size) },
    'spec.sources': {
      handler: p => d.builds.specSources(p.spec, p.format, p.baseDir)
    },
    'image.remove': { handler: p => d.images.remove(p.id) },
    'image.label': {
      handler: p => d.adverts.relabel(p.id, { set: p.set ?? [], remove: p.remove ?? [] })
    },
    'image.verify': { handler: p => d.images.verify(p.id) },
    'job.get': { handler: p => d.jobs.get(p.id) },
    'job.list': { handler: () => d.jobs.list() },
    'job.cancel': { handler: p => d.jobs.cancel(p.id) },
    'job.watch': {
      handler: (p, ctx) => d.jobs.watch(p.id, (e: JobEvent) => {
        if (e.type === 'progress') ctx.notify('job.progress', e.job)
        else ctx.notify('job.log', { id: e.id, line: e.line })
      }, ctx.signal)
    },
    'image.fetch': {
      handler: p => d.fetches.fetch(p.ref, { from: p.from, name: p.name, peerWaitMs: p.wait, limit: p.limit })
    },
    'fleet.init': {
      admin: () => 'the fleet (its secret, bootstrap nodes and allow-list) is the host\'s trust: root only',
      handler: p => d.fleet.init(p)
    },
    'fleet.show': { handler: () => d.fleet.show() },
    'fleet.allow': { admin: () => 'the fleet\'s allow-list is the host\'s trust: root only', handler: p => d.fleet.allow(p.key, true) },
    'fleet.deny': { admin: () => 'the fleet\'s allow-list is the host\'s trust: root only', handler: p => d.fleet.allow(p.key, false) },
    'peer.list': { handler: () => d.fleet.peers() },
    'package.search': {
      admin: p => p.uri === undefined ? undefined : hostUrlReason('uri', p.uri),
      handler: p => d.packages.search(p)
    },
    'spec.check': {
      handler: (p, ctx) => checkSpec(d.builds, d.store, p, ctx.rights)
    },
    'fleet.images': { handler: () => fleetImages(d.fleet.swarm) },
    'image.check': {
      admin: p => p.path === undefined ? undefined : 'path: osfarmd reads a spec file only for root; send the spec text (osfarmctl build does)',
      handler: (p, ctx) => d.builds.check(p, ctx.rights)
    },
    'image.outdated': { handler: () => d.builds.outdated() },
    // A policy keeps its creator's rights; each background build is checked against them.
    'rebuild.add': {
      handler: (p, ctx) => d.rebuilds.add(p, ctx.rights)
    },
    'rebuild.list': { handler: () => d.rebuilds.list() },
    'rebuild.remove': { handler: p => d.rebuilds.remove(p.id) },
    'seed.add': {
      admin: p => p.fleet ? 'fleet: a fleet-wide policy is signed by this host for every host: root only' : undefined,
      handler: p => d.seeds.add(p)
    },
    'seed.list': { handler: () => d.seeds.list() },
    'seed.remove': { handler: p => d.seeds.remove(p.id) },
    'seed.status': { handler: () => d.seeds.status() },
    'seed.cap': { admin: () => 'the seeding cap is the host\'s disk budget: root only', handler: p => d.seeds.setCap(p.bytes) },
    'prestage.start': {
      admin: () => 'disk: osfarmd opens host disks only for root (run osfarmctl prestage as root)',
      handler: p => d.prestages.begin(p)
    },
    'prestage.sync': { handler: p => d.prestages.sync(p.id) },
    'prestage.list': { handler: () => d.prestages.list() },
    'prestage.get': { handler: p => d.prestages.get(p.id) },
    'prestage.cancel': { handler: p => d.prestages.cancel(p.id) }
  }
}
