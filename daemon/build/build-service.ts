// The daemon's side of `image.build`: reads and checks the spec at once (a bad spec is an
// error of the call, not a failed job), runs the Builder in a job, and registers the top layer
// as an image through the image service, like an import (indexed into a manifest). A request
// whose image is already registered under the same name answers with it at once.

import fs from 'node:fs/promises'
import path from 'node:path'
import { BAD_PARAMS, NAME_IN_USE, PERMISSION_DENIED, SPEC_INVALID } from '../../protocol/errors.js'
import type { BuildParams, BuildResultInfo, ImageInfo, JobInfo, Rights, SpecSource } from '../../protocol/rpc.js'
import type { JobContext, JobManager } from '../jobs/jobs.js'
import type { ImageService } from '../images/images.js'
import type { Logger } from '../log.js'
import { Builder } from './builder.js'
import { detectFormat, MAX_SPEC_BYTES, parseSpec, type ImageSpec, type SpecFormat } from './spec.js'
import type { Resolved } from './sources.js'
import { checkLabels, mergeLabels, sameLabels, splitLabels } from '../images/labels.js'
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
    this.builder = new Builder({ store: options.store, workDir: options.workDir })
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

  async build (params: BuildParams, rights: Rights): Promise<JobInfo> {
    const parsed = await this.#readSpec(params)
    const name = params.name ?? parsed.name
    const labels = checkLabels(mergeLabels(parsed.labels, params.labels === undefined ? [] : splitLabels(params.labels)))
    const { spec, release } = await this.resolve(parsed, rights, params.sources)
    try {
      return await this.#start(spec, name, labels, release)
    } catch (err) {
      release()
      throw err
    }
  }

  // Starts (or joins, or answers from the catalog) the build; `release` once the spec's sources are no longer needed.
  async #start (spec: ImageSpec, name: string, labels: string[], release: () => void): Promise<JobInfo> {
    const plan = await this.builder.plan(spec)
    const running = this.#running.get(name)
    if (running) {
      if (running.key !== plan.key) throw NAME_IN_USE(`an image named "${name}" is being built from another spec`)
      checkSameLabels(name, 'is being built', running.labels, labels)
      release()
      return this.#jobs.start('build', name, () => running.done)
    }
    const existing = (await this.#images.list()).find(i => i.name === name)
    if (existing) {
      if (existing.volume !== plan.key) throw NAME_IN_USE(`an image named "${name}" exists (built from another spec); remove it or build with another name`)
      checkSameLabels(name, 'exists', existing.labels ?? [], labels)
      release()
      return this.#jobs.start('build', name, async () => cachedResult(existing, plan.layers.map(l => ({ key: l.key, step: l.kind }))))
    }
    await this.#images.checkName(name)
    let settle!: (p: Promise<BuildResultInfo>) => void
    const done = new Promise<BuildResultInfo>(resolve => { settle = resolve })
    // Joiners see a failure through their own job; unjoined, it must not count as unhandled.
    done.catch(() => {})
    this.#running.set(name, { key: plan.key, labels, done })
    try {
      return this.#jobs.start('build', name, ctx => {
        const work = this.#run(spec, name, labels, ctx).finally(() => { this.#running.delete(name); release() })
        settle(work)
        return work
      })
    } catch (err) {
      this.#running.delete(name)
      throw err
    }
  }

  async #run (spec: ImageSpec, name: string, labels: string[], ctx: JobContext): Promise<BuildResultInfo> {
    let count = 0
    const result = await this.builder.build(spec, {
      signal: ctx.signal,
      onLog: line => ctx.log(line),
      onProgress: (i, phase, done, total) => {
        count = Math.max(count, i + 1)
        ctx.progress(`layer ${i + 1} ${phase}`, done, total, 'steps')
      }
    })
    const layers = result.layers.map(l => ({ key: l.key, step: l.step, cached: l.cached, seconds: l.seconds }))
    const image = await this.#images.register({ volume: result.volumeKey, name, origin: 'build', layers: layers.map(l => l.key), labels, ctx })
    this.#log.info('image built', { image: image.id, name, key: result.key, built: layers.filter(l => !l.cached).length })
    if (this.#cacheBytes !== undefined) {
      const evicted = await this.prune(this.#cacheBytes)
      if (evicted.length) this.#log.info('evicted layers', { layers: evicted.length })
    }
    return { image, key: result.key, layers, cached: layers.every(l => l.cached) }
  }

  async #readSpec (params: BuildParams): Promise<ImageSpec> {
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

function cachedResult (image: ImageInfo, layers: Array<{ key: string, step: string }>): BuildResultInfo {
  return { image, key: image.volume, layers: layers.map(l => ({ ...l, cached: true, seconds: 0 })), cached: true }
}
