// The daemon's side of `image.build`: reads and checks the spec at once (a bad spec is an
// error of the call, not a failed job), runs the Builder in a job, and registers the top layer
// as an image through the image service, like an import (indexed into a manifest). A request
// whose image is already registered under the same name answers with it at once.
// Versions: layer keys hold the states of the repositories they read (plan.ts), so a request
// after a mirror changed plans new keys for the layers that read it. Built, that is the next
// version of the name (`NAME` the newest, `NAME@N` each one held); if it gives the same content
// as the newest version, that version just records the new key. A mirror that cannot be reached
// answers with the newest version and a warning.

import fs from 'node:fs/promises'
import path from 'node:path'
import { BAD_PARAMS, NAME_IN_USE, PERMISSION_DENIED, SNAPSHOT_UNAVAILABLE, SPEC_INVALID } from '../../protocol/errors.js'
import type { BuildCheckResult, BuildParams, BuildResultInfo, ImageInfo, JobInfo, OutdatedInfo, RepoChange, RepoInput, Rights, SpecSource } from '../../protocol/rpc.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { ImageService } from '../images/images.js'
import type { Logger } from '../log.js'
import { Builder } from './builder.js'
import { detectFormat, MAX_SPEC_BYTES, parseSpec, snapshotProblem, type ImageSpec, type SpecFormat } from './spec.js'
import type { Plan } from './plan.js'
import { RepoStates, type HistoryDb } from './repo-state.js'
import { toHex } from '../blocks/hash.js'
import type { Resolved } from './sources.js'
import { checkLabels, mergeLabels, sameLabels } from '../images/labels.js'
import type { LayerStore } from '../store/layer-store.js'
import type { StreamRegistry } from '../rpc/streams.js'
import { SourceStore, specUrlReason, type SourceLimits } from './sources.js'

export interface BuildServiceOptions {
  store: LayerStore
  images: ImageService
  jobs: JobManager
  log: Logger
  // Scratch space for builds (mount points, bootstrap trees, apt's cache).
  workDir: string
  // With a cap, least recently used layers no image needs are evicted after each build.
  cacheBytes?: number
  // Copies of the files specs build from (emptied at start), and their caps.
  sourcesDir: string
  sourceLimits: SourceLimits
  streams: StreamRegistry
  // Where the repository states seen are kept (a catalog sublevel); else in memory.
  repoHistory?: HistoryDb
  // How long a repository check answers for.
  mirrorCheckSeconds?: number
}

export class BuildService {
  readonly builder: Builder
  readonly sources: SourceStore
  readonly #images: ImageService
  readonly #jobs: JobManager
  readonly #log: Logger
  // Builds running per image name, with the key and labels they build, so one name is registered once.
  readonly #running = new Map<string, { key: string, labels: string[], done: Promise<BuildResultInfo> }>()
  readonly #cacheBytes: number | undefined

  constructor (options: BuildServiceOptions) {
    this.builder = new Builder({ store: options.store, workDir: options.workDir, repoStates: new RepoStates({ ...(options.repoHistory ? { db: options.repoHistory } : {}), ...(options.mirrorCheckSeconds ? { ttlMs: options.mirrorCheckSeconds * 1000 } : {}) }) })
    this.sources = new SourceStore({ dir: options.sourcesDir, streams: options.streams, limits: options.sourceLimits, log: options.log })
    this.#images = options.images
    this.#jobs = options.jobs
    this.#log = options.log
    this.#cacheBytes = options.cacheBytes
    // `image rm` of a built image frees its layers that no other image uses.
    this.#images.subscribe({
      registered: () => {},
      removed: image => {
        if (image.origin !== 'build') return
        void this.#freeLayers(image).catch(err => this.#log.warn('freeing layers failed', { image: image.id, error: String(err) }))
      }
    })
  }

  // Image volumes, and with layers, every layer some image was built from.
  async #keep (layers: boolean): Promise<Set<string>> {
    const keep = new Set<string>()
    for (const i of await this.#images.list()) {
      keep.add(i.volume)
      if (layers) for (const l of i.layers) keep.add(l)
    }
    return keep
  }

  async #freeLayers (image: ImageInfo): Promise<void> {
    const removed = await this.builder.removeLayers([...image.layers].reverse(), await this.#keep(true))
    if (removed.length) this.#log.info('freed layers', { image: image.id, layers: removed.length })
  }

  // Evicts least recently used layers until the store holds at most maxBytes. An image's own
  // volume is never evicted; the lower layers it was built from are only a cache and may be.
  async prune (maxBytes: number): Promise<string[]> {
    return this.builder.prune(maxBytes, await this.#keep(false))
  }

  // The host files a spec names, for a caller to upload (spec.sources).
  specSources (text: string, format?: SpecFormat, baseDir?: string): SpecSource[] {
    return SourceStore.named(this.parse(text, format, baseDir))
  }

  // A parsed spec made safe to plan for this caller: its mirrors allowed, its sources copies.
  async resolve (spec: ImageSpec, rights: Rights, uploaded?: Record<string, string>): Promise<Resolved> {
    if (rights !== 'admin') {
      const reason = specUrlReason(spec)
      if (reason) throw PERMISSION_DENIED(reason)
    }
    return this.sources.resolve(spec, rights, uploaded)
  }

  async build (params: BuildParams, rights: Rights, opts: { priority?: 'background' } = {}): Promise<JobInfo> {
    const parsed = await this.#readSpec(params)
    const name = params.name ?? parsed.name
    const labels = checkLabels(mergeLabels(parsed.labels, params.labels ?? []))
    const { spec, release } = await this.resolve(parsed, rights, params.sources)
    try {
      return await this.#start(spec, name, labels, release, opts.priority)
    } catch (err) {
      release()
      throw err
    }
  }

  // For a rebuild policy: the spec checked with the caller's rights, and its files as copies
  // pinned for `owner` (by the host path the spec names → BLAKE3, as uploads are named).
  async pinSources (params: BuildParams, rights: Rights, uploaded: Record<string, string> | undefined, owner: string): Promise<{ name: string, sources: Record<string, string> }> {
    const parsed = await this.#readSpec(params)
    const { spec, release } = await this.resolve(parsed, rights, uploaded)
    try {
      await this.builder.plan(spec)
      const sources: Record<string, string> = {}
      parsed.files.forEach((f, i) => { if (f.source !== undefined) sources[f.source] = spec.files[i]!.blob!.blake3 })
      if (parsed.rootfs !== undefined && spec.rootfs !== undefined) sources[parsed.rootfs] = path.basename(spec.rootfs)
      await this.sources.pin(owner, [...Object.values(sources), ...spec.files.map(f => f.blob!.blake3)])
      return { name: params.name ?? parsed.name, sources }
    } finally {
      release()
    }
  }

  // image.check: the plan against the versions held, without building.
  async check (params: BuildParams, rights: Rights): Promise<BuildCheckResult> {
    const parsed = await this.#readSpec(params)
    const name = params.name ?? parsed.name
    const { spec, release } = await this.resolve(parsed, rights, params.sources)
    try {
      const plan = await this.builder.plan(spec)
      const versions = await this.#images.versions(name)
      const current = versions.find(i => holds(i, plan.key)) ?? null
      const newest = versions.at(-1) ?? null
      const layers = []
      for (const l of plan.layers) layers.push({ index: l.index, step: l.kind, key: l.key, cached: (await this.builder.store.stat(l.key))?.kind === 'committed' })
      return {
        name,
        key: plan.key,
        specKey: plan.specKey,
        current,
        newest,
        upToDate: current !== null && current.id === newest?.id,
        layers,
        changed: newest?.specKey === plan.specKey ? changes(newest.inputs ?? [], plan.inputs) : [],
        warnings: plan.unreachable.length ? [unreachableWarning(plan, current ?? newest)] : []
      }
    } finally {
      release()
    }
  }

  // image.outdated: the newest version of every built name against its repositories now.
  async outdated (): Promise<OutdatedInfo[]> {
    const newest = new Map<string, ImageInfo>()
    for (const i of await this.#images.list()) {
      if (i.origin !== 'build' || i.version === undefined) continue
      const n = newest.get(i.name)
      if (!n || (n.version ?? 0) < i.version) newest.set(i.name, i)
    }
    const out: OutdatedInfo[] = []
    for (const image of newest.values()) {
      const was = image.inputs ?? []
      const now = await this.builder.repos.resolve(was.map(i => ({ uri: i.uri, suite: i.suite })))
      const layered = now.inputs.map(n => ({ ...n, layer: was.find(w => w.uri === n.uri && w.suite === n.suite)?.layer ?? 0 }))
      const changed = changes(was, layered).filter(c => !now.unreachable.some(u => u.startsWith(`${c.uri} ${c.suite}:`)))
      const from = Math.min(...changed.map(c => c.layer))
      out.push({
        image,
        outdated: changed.length > 0,
        changed,
        rebuild: changed.length ? (image.steps ?? []).slice(from) : [],
        warnings: now.unreachable.length ? [`mirror unreachable (${now.unreachable.join('; ')}): cannot tell`] : []
      })
    }
    return out.sort((a, b) => a.image.name.localeCompare(b.image.name))
  }

  // Starts (or joins, or answers from the catalog) the build; `release` once the spec's sources are no longer needed.
  async #start (spec: ImageSpec, name: string, labels: string[], release: () => void, priority?: 'background'): Promise<JobInfo> {
    const plan = await this.builder.plan(spec)
    const running = this.#running.get(name)
    if (running) {
      if (running.key !== plan.key) throw NAME_IN_USE(`an image named "${name}" is being built from another spec`)
      checkSameLabels(name, 'is being built', running.labels, labels)
      release()
      return this.#jobs.start('build', name, () => running.done, { priority })
    }
    const versions = await this.#images.versions(name)
    const newest = versions.at(-1)
    const hit = versions.find(i => holds(i, plan.key))
    // The newest version answers a request while its repositories cannot be checked.
    const cached = hit ?? (newest && plan.unreachable.length && newest.specKey === plan.specKey ? newest : undefined)
    if (cached) {
      checkSameLabels(name, 'exists', cached.labels ?? [], labels)
      release()
      const warnings = plan.unreachable.length ? [unreachableWarning(plan, cached)] : []
      return this.#jobs.start('build', name, async ctx => {
        for (const w of warnings) ctx.log(`warning: ${w}`)
        return cachedResult(cached, plan, warnings)
      }, { priority })
    }
    if (newest && newest.specKey !== plan.specKey) throw NAME_IN_USE(`an image named "${name}" exists (built from another spec); remove it or build with another name`)
    if (newest) checkSameLabels(name, 'exists', newest.labels ?? [], labels)
    else await this.#images.checkName(name)
    // A pinned state is only ever answered from layers built from it: building now would read
    // what the repositories serve today.
    if (spec.snapshot !== undefined) {
      for (const l of plan.layers) {
        if (!l.step.repositoryStates) continue
        if ((await this.builder.store.stat(l.key))?.kind !== 'committed') throw SNAPSHOT_UNAVAILABLE(`snapshot ${spec.snapshot}: the ${l.kind} layer of that state is not in this host's cache (built elsewhere? fetch ${name}@N from the fleet)`)
      }
    }
    let settle!: (p: Promise<BuildResultInfo>) => void
    const done = new Promise<BuildResultInfo>(resolve => { settle = resolve })
    // Joiners see a failure through their own job; unjoined, it must not count as unhandled.
    done.catch(() => {})
    this.#running.set(name, { key: plan.key, labels, done })
    try {
      return this.#jobs.start('build', name, ctx => {
        const work = this.#run(spec, plan, name, labels, newest, ctx).finally(() => { this.#running.delete(name); release() })
        settle(work)
        return work
      }, { priority })
    } catch (err) {
      this.#running.delete(name)
      throw err
    }
  }

  async #run (spec: ImageSpec, plan: Plan, name: string, labels: string[], newest: ImageInfo | undefined, ctx: JobContext): Promise<BuildResultInfo> {
    let count = 0
    for (const c of newest ? changes(newest.inputs ?? [], plan.inputs) : []) ctx.log(`changed: ${c.uri} ${c.suite} ${c.was.slice(0, 12)} → ${c.now.slice(0, 12)} (layer ${c.layer} and up)`)
    const result = await this.builder.build(spec, {
      plan,
      signal: ctx.signal,
      onLog: line => ctx.log(line),
      onProgress: (i, phase, done, total) => {
        count = Math.max(count, i + 1)
        ctx.progress(`layer ${i + 1} ${phase}`, done, total, 'steps')
      }
    })
    const layers = result.layers.map(l => ({ key: l.key, step: l.step, cached: l.cached, seconds: l.seconds }))
    const manifest = await this.#images.index(result.volumeKey, ctx)
    if (newest && toHex(manifest.root) === newest.root) {
      // New repository states, the same bytes: the newest version holds this key too.
      const same: ImageInfo = { ...newest, keys: [...new Set([...(newest.keys ?? []), plan.key])], inputs: plan.inputs }
      await this.#images.update(same)
      ctx.log(`the rebuilt layers give version ${newest.version}'s content: no new version`)
      this.#log.info('image rebuilt unchanged', { image: newest.id, name, version: newest.version ?? 0, key: result.key })
      return { image: same, key: result.key, layers, cached: layers.every(l => l.cached) }
    }
    const version = { version: (newest?.version ?? 0) + 1, specKey: plan.specKey, inputs: plan.inputs, steps: plan.layers.map(l => l.kind) }
    const image = await this.#images.register({ volume: result.volumeKey, name, origin: 'build', layers: layers.map(l => l.key), labels, ctx, manifest, version })
    this.#log.info('image built', { image: image.id, name, version: version.version, key: result.key, built: layers.filter(l => !l.cached).length })
    if (this.#cacheBytes !== undefined) {
      const evicted = await this.prune(this.#cacheBytes)
      if (evicted.length) this.#log.info('evicted layers', { layers: evicted.length })
    }
    return { image, key: result.key, layers, cached: layers.every(l => l.cached) }
  }

  async #readSpec (params: BuildParams): Promise<ImageSpec> {
    const spec = await this.#readSpecText(params)
    if (params.snapshot === undefined) return spec
    const problem = snapshotProblem(params.snapshot)
    if (problem) throw BAD_PARAMS(`snapshot: ${problem}`)
    return { ...spec, snapshot: params.snapshot.trim() }
  }

  async #readSpecText (params: BuildParams): Promise<ImageSpec> {
    if ((params.spec === undefined) === (params.path === undefined)) throw BAD_PARAMS('give either spec (its text) or path (a spec file)')
    let text = params.spec
    let baseDir = params.baseDir
    if (params.path !== undefined) {
      if (!path.isAbsolute(params.path)) throw BAD_PARAMS('the spec path must be absolute')
      const st = await fs.stat(params.path).catch(err => { throw SPEC_INVALID(`cannot read ${params.path}: ${err.code ?? err.message}`) })
      if (!st.isFile()) throw SPEC_INVALID(`${params.path} is not a file`)
      if (st.size > MAX_SPEC_BYTES) throw SPEC_INVALID(`${params.path} is larger than ${MAX_SPEC_BYTES} bytes`)
      text = await fs.readFile(params.path, 'utf8')
      baseDir ??= path.dirname(params.path)
    }
    return this.parse(text!, params.format ?? detectFormat(text!, params.path), baseDir)
  }

  parse (text: string, format: SpecFormat | undefined, baseDir: string | undefined): ImageSpec {
    if (baseDir !== undefined && !path.isAbsolute(baseDir)) throw BAD_PARAMS('baseDir must be absolute')
    return parseSpec(text, format ?? detectFormat(text), baseDir !== undefined ? { baseDir } : {})
  }
}

// A request for an image that exists (or is being built) may repeat its labels or give none; it
// cannot change them: they are signed into the image's advert when it is registered, the
// transfer service keeps that advert per content root, and hosts that fetched the image pass
// the same signed advert on.
function checkSameLabels (name: string, state: string, have: string[], asked: string[]): void {
  if (!asked.length || sameLabels(have, asked)) return
  throw NAME_IN_USE(`an image named "${name}" ${state} with labels ${have.join(',') || '(none)'}, not ${asked.join(',')}; change them with osfarmctl image label`)
}

function cachedResult (image: ImageInfo, plan: Plan, warnings: string[]): BuildResultInfo {
  const layers = holds(image, plan.key) ? plan.layers.map(l => ({ key: l.key, step: l.kind })) : image.layers.map((key, i) => ({ key, step: image.steps?.[i] ?? plan.layers[i]?.kind ?? '?' }))
  return { image, key: holds(image, plan.key) ? plan.key : image.volume, layers: layers.map(l => ({ ...l, cached: true, seconds: 0 })), cached: true, ...(warnings.length ? { warnings } : {}) }
}

// Whether the image's content is what a plan with top key `key` gives.
function holds (image: ImageInfo, key: string): boolean {
  return image.volume === key || (image.keys?.includes(key) ?? false)
}

function unreachableWarning (plan: Plan, image: ImageInfo | null | undefined): string {
  return `mirror unreachable (${plan.unreachable.join('; ')})${image ? `: cached image from ${image.createdAt}` : ''}`
}

// The repositories whose state differs between what an image was built from and now.
function changes (was: RepoInput[], now: RepoInput[]): RepoChange[] {
  const out: RepoChange[] = []
  for (const n of now) {
    const w = was.find(x => x.uri === n.uri && x.suite === n.suite)
    if (w && w.hash !== n.hash) out.push({ uri: n.uri, suite: n.suite, was: w.hash, now: n.hash, layer: n.layer ?? w.layer ?? 0 })
    if (!w) out.push({ uri: n.uri, suite: n.suite, was: '', now: n.hash, layer: n.layer ?? 0 })
  }
  return out
}
