// Long work runs as jobs: the RPC call returns the job at once, the work goes on in the daemon
// whatever happens to the client, and watchers get progress as it happens. Finished jobs are kept
// in the catalog; a job that was running when the daemon died is marked failed at the next start.

import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { JOB_CANCELLED, JOB_NOT_FOUND, OsfarmError } from '../../protocol/errors.js'
import type { JobInfo, JobProgress } from '../../protocol/rpc.js'
import type { Catalog } from '../catalog/catalog.js'
import type { Logger } from '../log.js'

// Progress events are coalesced to at most one per interval per job.
const PROGRESS_INTERVAL_MS = 200
const KEEP_FINISHED = 200

export interface JobContext {
  signal: AbortSignal
  progress (phase: string, done: number, total: number, unit?: JobProgress['unit']): void
  log (line: string): void
}

export type JobEvent = { type: 'progress', job: JobInfo } | { type: 'log', id: string, line: string }

export interface JobStartOptions {
  // 'background': work the daemon does on its own (seeding), which yields to every other job.
  priority?: 'user' | 'background'
}

interface Running {
  info: JobInfo
  abort: AbortController
  done: Promise<JobInfo>
  lastEmit: number
  timer: NodeJS.Timeout | undefined
}

export class JobManager {
  readonly #catalog: Catalog
  readonly #log: Logger
  readonly #running = new Map<string, Running>()
  readonly #finished = new Map<string, JobInfo>()
  readonly #events = new EventEmitter()
  // Told when a job starts or ends (the seed service yields to users' jobs).
  readonly #activity: Array<(job: JobInfo, event: 'start' | 'end') => void> = []

  readonly #onEnd: (job: JobInfo) => void

  constructor (catalog: Catalog, log: Logger, onEnd: (job: JobInfo) => void = () => {}) {
    this.#catalog = catalog
    this.#log = log
    this.#onEnd = onEnd
    this.#events.setMaxListeners(0)
  }

  // Loads finished jobs; marks the ones a dead daemon left running as failed.
  async load (): Promise<void> {
    for (const job of await this.#catalog.listJobs()) {
      if (job.state === 'running') {
        job.state = 'failed'
        job.error = { code: 'JOB_FAILED', message: 'JOB_FAILED: the daemon stopped while this job ran' }
        job.finishedAt = new Date().toISOString()
        await this.#catalog.putJob(job)
      }
      this.#finished.set(job.id, job)
    }
  }

  onActivity (listener: (job: JobInfo, event: 'start' | 'end') => void): void {
    this.#activity.push(listener)
  }

  #tell (job: JobInfo, event: 'start' | 'end'): void {
    for (const l of this.#activity) {
      try { l({ ...job }, event) } catch (err) { this.#log.warn('job listener failed', { error: (err as Error).message }) }
    }
  }

  // Running jobs a user asked for (not background work).
  get userRunning (): number {
    let n = 0
    for (const r of this.#running.values()) if (r.info.priority !== 'background') n++
    return n
  }

  start<T> (kind: string, target: string, work: (ctx: JobContext) => Promise<T>, options: JobStartOptions = {}): JobInfo {
    const id = randomBytes(6).toString('hex')
    const info: JobInfo = {
      id,
      kind,
      target,
      state: 'running',
      progress: { phase: 'queued', done: 0, total: 0, unit: 'steps' },
      createdAt: new Date().toISOString(),
      ...(options.priority === 'background' ? { priority: 'background' as const } : {})
    }
    const abort = new AbortController()
    const run: Running = { info, abort, done: undefined as unknown as Promise<JobInfo>, lastEmit: 0, timer: undefined }
    const ctx: JobContext = {
      signal: abort.signal,
      progress: (phase, done, total, unit = 'bytes') => {
        info.progress = { phase, done, total, unit }
        this.#throttledEmit(run)
      },
      log: line => this.#events.emit(id, { type: 'log', id, line } satisfies JobEvent)
    }
    this.#running.set(id, run)
    this.#log.info('job started', { job: id, kind, target })
    this.#tell(info, 'start')
    const persist = this.#catalog.putJob(info).catch(() => {})
    run.done = (async () => {
      await persist
      try {
        info.result = await work(ctx)
        info.state = 'done'
      } catch (err) {
        const e = abort.signal.aborted ? JOB_CANCELLED() : OsfarmError.from(err)
        info.state = abort.signal.aborted ? 'cancelled' : 'failed'
        info.error = { code: e.code, message: e.message }
      }
      info.finishedAt = new Date().toISOString()
      clearTimeout(run.timer)
      this.#running.delete(id)
      this.#finished.set(id, info)
      this.#trimFinished()
      await this.#catalog.putJob(info).catch(err => this.#log.error('cannot record job', { job: id, error: err.message }))
      this.#log.info('job ended', { job: id, kind, state: info.state, error: info.error?.message })
      this.#onEnd({ ...info })
      this.#tell(info, 'end')
      this.#events.emit(id, { type: 'progress', job: info } satisfies JobEvent)
      return info
    })()
    return { ...info }
  }

  #throttledEmit (run: Running): void {
    if (run.timer) return
    const wait = Math.max(0, run.lastEmit + PROGRESS_INTERVAL_MS - Date.now())
    run.timer = setTimeout(() => {
      run.timer = undefined
      run.lastEmit = Date.now()
      if (run.info.state === 'running') this.#events.emit(run.info.id, { type: 'progress', job: { ...run.info } } satisfies JobEvent)
    }, wait)
  }

  #trimFinished (): void {
    while (this.#finished.size > KEEP_FINISHED) {
      const oldest = this.#finished.keys().next().value as string
      this.#finished.delete(oldest)
      this.#catalog.jobs.del(oldest).catch(() => {})
    }
  }

  get (id: string): JobInfo {
    const job = this.#running.get(id)?.info ?? this.#finished.get(id)
    if (!job) throw JOB_NOT_FOUND(`no job "${id}"`)
    return { ...job }
  }

  list (): JobInfo[] {
    return [...this.#finished.values(), ...[...this.#running.values()].map(r => r.info)]
      .map(j => ({ ...j }))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  get runningCount (): number { return this.#running.size }

  cancel (id: string): JobInfo {
    const run = this.#running.get(id)
    if (!run) return this.get(id)
    run.abort.abort()
    return { ...run.info }
  }

  // Calls `onEvent` for the job's progress and log lines until it ends; resolves with its end state.
  async watch (id: string, onEvent: (e: JobEvent) => void, signal?: AbortSignal): Promise<JobInfo> {
    const run = this.#running.get(id)
    if (!run) return this.get(id)
    const listener = (e: JobEvent) => onEvent(e)
    this.#events.on(id, listener)
    const stop = () => this.#events.off(id, listener)
    signal?.addEventListener('abort', stop, { once: true })
    try {
      onEvent({ type: 'progress', job: { ...run.info } })
      return await run.done
    } finally {
      stop()
    }
  }

  // Cancels every running job and waits (bounded) for them to wind down.
  async stopAll (timeoutMs: number): Promise<void> {
    const runs = [...this.#running.values()]
    for (const r of runs) r.abort.abort()
    await Promise.race([
      Promise.allSettled(runs.map(r => r.done)),
      new Promise(resolve => setTimeout(resolve, timeoutMs).unref())
    ])
  }
}
