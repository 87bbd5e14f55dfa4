// Rebuild policies: osfarmd builds a spec again on its own, every so often and/or when a
// repository its layers read has changed, as background jobs (they yield like seeding: users'
// jobs go first). Each new version is registered, and so advertised; seed policies elsewhere
// roll it out.
//
// Trust: a policy keeps the rights of the caller that made it, and every run is a build with
// those rights (a non-root policy can never name a file: or loopback mirror, checked again each
// run). The spec's files are resolved once, when the policy is made, into daemon-owned copies
// pinned in the SourceStore for the policy's life: no run reads a host path.

import { randomBytes } from 'node:crypto'
import { BAD_PARAMS, NOT_FOUND } from '../../protocol/errors.js'
import type { BuildParams, BuildResultInfo, JobInfo, RebuildPolicy, RebuildPolicyParams, Rights } from '../../protocol/rpc.js'
import type { Catalog } from '../catalog/catalog.js'
import type { JobManager } from '../jobs/jobs.js'
import type { Logger } from '../log.js'
import type { BuildService } from './build-service.js'
import { splitLabels } from '../images/labels.js'

export const MAX_REBUILD_POLICIES = 64
const MIN_EVERY_SECONDS = 60
const TICK_MS = 5_000

interface Stored extends RebuildPolicy {
  params: BuildParams
}

// Policies saved before build labels were a list kept them comma-joined.
function upgrade (p: Stored): Stored {
  const labels: unknown = p.params.labels
  return typeof labels === 'string' ? { ...p, params: { ...p.params, labels: splitLabels(labels) } } : p
}

export class RebuildService {
  readonly #db
  readonly #builds: BuildService
  readonly #jobs: JobManager
  readonly #log: Logger
  readonly #checkMs: number
  readonly #policies = new Map<string, Stored>()
  readonly #lastCheck = new Map<string, number>()
  #timer: NodeJS.Timeout | undefined
  #ticking = false

  constructor (deps: { catalog: Catalog, builds: BuildService, jobs: JobManager, log: Logger, checkSeconds: number }) {
    this.#db = deps.catalog.sublevel<Stored>('rebuild')
    this.#builds = deps.builds
    this.#jobs = deps.jobs
    this.#log = deps.log
    this.#checkMs = deps.checkSeconds * 1000
  }

  async start (): Promise<void> {
    for await (const [id, p] of this.#db.iterator()) this.#policies.set(id, { ...upgrade(p), running: null })
    this.#timer = setInterval(() => { void this.#tick() }, TICK_MS)
    this.#timer.unref()
  }

  stop (): void {
    clearInterval(this.#timer)
  }

  list (): RebuildPolicy[] {
    return [...this.#policies.values()].map(publicView).sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  async add (p: RebuildPolicyParams, rights: Rights): Promise<RebuildPolicy> {
    if (this.#policies.size >= MAX_REBUILD_POLICIES) throw BAD_PARAMS(`at most ${MAX_REBUILD_POLICIES} rebuild policies`)
    const every = p.everySeconds ?? null
    if (every !== null && (!Number.isFinite(every) || every < MIN_EVERY_SECONDS)) throw BAD_PARAMS(`every must be at least ${MIN_EVERY_SECONDS} seconds`)
    const onChange = p.onChange ?? every === null
    if (every === null && !onChange) throw BAD_PARAMS('a rebuild policy needs --every, --on-change, or both')
    const params: BuildParams = { spec: p.spec, ...(p.format ? { format: p.format } : {}), ...(p.baseDir ? { baseDir: p.baseDir } : {}), ...(p.name ? { name: p.name } : {}), ...(p.labels ? { labels: p.labels } : {}) }
    // The spec is checked with the caller's rights now (mirrors, sources), and its files become
    // pinned copies named by hash: later runs build from those.
    const id = randomBytes(4).toString('hex')
    const { name, sources } = await this.#builds.pinSources(params, rights, p.sources, `rebuild:${id}`)
    try {
      const policy: Stored = {
        id, name, everySeconds: every, onChange, createdAt: new Date().toISOString(), rights,
        lastRun: null, lastResult: null, lastVersion: null, nextRun: new Date().toISOString(), running: null,
        params: { ...params, sources }
      }
      await this.#db.put(id, policy)
      this.#policies.set(id, policy)
      this.#log.info('rebuild policy added', { id, name, every: every ?? '-', onChange: String(onChange), rights })
      void this.#tick()
      return publicView(policy)
    } catch (err) {
      await this.#builds.sources.unpin(`rebuild:${id}`)
      throw err
    }
  }

  async remove (id: string): Promise<{ id: string, removed: boolean }> {
    const p = this.#policies.get(id)
    if (!p) throw NOT_FOUND(`no rebuild policy ${id}`)
    this.#policies.delete(id)
    await this.#db.del(id)
    await this.#builds.sources.unpin(`rebuild:${id}`)
    this.#log.info('rebuild policy removed', { id, name: p.name })
    return { id, removed: true }
  }

  async #tick (): Promise<void> {
    if (this.#ticking) return
    this.#ticking = true
    try {
      for (const p of [...this.#policies.values()]) {
        if (p.running || !this.#policies.has(p.id)) continue
        const why = await this.#due(p)
        if (why) await this.#run(p, why)
      }
    } catch (err) {
      this.#log.warn('rebuild pass failed', { error: (err as Error).message })
    } finally {
      this.#ticking = false
    }
  }

  // Why the policy should build now, if it should.
  async #due (p: Stored): Promise<string | undefined> {
    const now = Date.now()
    if (p.lastRun === null) return 'first run'
    if (p.everySeconds !== null && now >= Date.parse(p.lastRun) + p.everySeconds * 1000) return `every ${p.everySeconds} s`
    if (!p.onChange || now - (this.#lastCheck.get(p.id) ?? 0) < this.#checkMs) return undefined
    this.#lastCheck.set(p.id, now)
    try {
      const check = await this.#builds.check(p.params, p.rights)
      if (!check.upToDate && !check.warnings.length) return `repositories changed: ${check.changed.map(c => `${c.uri} ${c.suite}`).join(', ') || 'not built yet'}`
    } catch (err) {
      this.#log.warn('rebuild check failed', { id: p.id, name: p.name, error: (err as Error).message })
    }
    return undefined
  }

  async #run (p: Stored, why: string): Promise<void> {
    let job: JobInfo
    try {
      job = await this.#builds.build(p.params, p.rights, { priority: 'background' })
    } catch (err) {
      await this.#record(p, `failed to start: ${(err as Error).message}`, null)
      return
    }
    p.running = job.id
    this.#log.info('rebuilding', { id: p.id, name: p.name, why, job: job.id })
    const end = await this.#jobs.watch(job.id, () => {}).catch(() => undefined)
    p.running = null
    if (end?.state === 'done') {
      const r = end.result as BuildResultInfo
      await this.#record(p, r.cached ? `cached (version ${r.image.version ?? '-'})` : `built version ${r.image.version ?? '-'}`, r.image.version ?? null)
    } else {
      await this.#record(p, `${end?.state ?? 'lost'}: ${end?.error?.message ?? ''}`.trim(), null)
    }
  }

  async #record (p: Stored, result: string, version: number | null): Promise<void> {
    if (!this.#policies.has(p.id)) return
    p.lastRun = new Date().toISOString()
    p.lastResult = result
    if (version !== null) p.lastVersion = version
    p.nextRun = p.everySeconds !== null ? new Date(Date.parse(p.lastRun) + p.everySeconds * 1000).toISOString() : null
    this.#lastCheck.set(p.id, Date.now())
    await this.#db.put(p.id, p)
  }
}

function publicView (p: Stored): RebuildPolicy {
  const { params: _, ...rest } = p
  return rest
}
