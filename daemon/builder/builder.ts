// The image builder: a spec becomes a plan of layers (plan.ts); each layer that the store does
// not hold yet is made as a snapshot of its parent, changed by its step and committed. A layer
// already committed is reused at once (`cached`), and two builds that need the same layer at
// the same time share one job.
//
//   base      flavour's bootstrap into a directory (mmdebstrap or tar, sandboxed) → mke2fs -d
//             onto the volume (pinned config, fake time, UUID and hash seed from the key) →
//             every inode's times set to the epoch
//   packages  snapshot → sandbox: mount → overlay → apt-get pivoted into the merged root
//             (proc, sys, dev, apt's cache, policy-rc.d) → the changes written into the
//             layer in name order by one tar (step-overlay.ts) → trim
//   files     snapshot → sandbox: mount → files copied in through the in-root resolver → trim
//   scripts   snapshot → sandbox: mount → each script with /bin/sh -e pivoted into the image
//   boot      snapshot → sandbox: mount → fstab, hostname, /etc/osfarm/boot.json
// Each step runs in a sandbox of its own (sandbox/sandbox.ts): its mounts and processes live
// in its own namespaces and die with it, within its time, memory and CPU limits.
// Determinism (one spec, the same blocks wherever it is built): every step other than the
// base runs on an overlay, and its result is written into the layer by one process in name
// order, so placement does not depend on the step's timing; mounts are noatime and
// nodelalloc with stream allocation; before a mounted layer is unmounted its free blocks are
// trimmed; afterwards the inodes it touched get the epoch's times and generation 0 (checksums
// redone by e2fsck), deleted inodes are cleared, and the superblock fields a mount changes are
// reset. Two builds of the same step on the same parent give byte-identical layers.

import fs from 'node:fs/promises'
import path from 'node:path'
import { BUILD_FAILED, JOB_CANCELLED, OsfarmError, SIZE_TOO_SMALL, VOLUME_EXISTS } from '../../protocol/errors.js'
import { hostFull, hostFullError } from './host-space.js'
import { hashParts } from '../blocks/hash.js'
import type { LayerStore, VolumeInfo } from '../store/layer-store.js'
import { readHostSources } from './host-mirror.js'
import { hasMmdebstrap } from './tools/mmdebstrap.js'
import { fixChecksums, makeFs, normalizeTimes, resetSuperblock } from './tools/mke2fs.js'
import { treeBytes, type StrayTimes } from './mounted-root.js'
import { detach, killRootedIn, loopDevices, mountsUnder, umount } from './tools/mount.js'
import { scanInodes } from './ext4-inodes.js'
import { BUILD_EPOCH, planBuild, type Plan, type PlannedLayer, type StepKind } from './plan.js'
import { RepoStates } from './repo-state.js'
import { runStep, toolSandbox, type Limits } from './sandbox/sandbox.js'
import { cgroupSupport, removeStaleCgroups, type CgroupSupport } from './sandbox/cgroup.js'
import type { LayerJob } from './sandbox/sandbox-init.js'
import { parseSnapshot, parseSpec, type ImageSpec, type SpecFormat, type ParseOptions } from './spec.js'
import type { HostInfo } from './flavours/flavour.js'

// Layer volumes are named by their key: 64 hex digits.
const LAYER_KEY = /^[0-9a-f]{64}$/
const USAGE_FILE = 'layer-use.json'

export interface BuilderOptions {
  store: LayerStore
  // Scratch space: mount points, bootstrap trees, apt's cache. Must not be on a noexec mount.
  workDir: string
  // Where the host's apt sources are read from, for the default mirror.
  aptDir?: string
  // Each step's bounds; unset fields take DEFAULT_LIMITS.
  limits?: Partial<Limits>
  // Files of crashed runs' loop devices lie under this dir (default: workDir's parent, the
  // data dir); recover() detaches those no mount uses.
  dataDir?: string
  // The repositories' states for layer keys (with a persistent history in the daemon).
  repoStates?: RepoStates
}

// Generous: a bootable image's kernel and initramfs under apt take minutes, not an hour.
export const DEFAULT_LIMITS: Limits = { timeoutMs: 3_600_000, memoryBytes: 0, cpus: 0 }

export interface Recovered {
  mounts: string[]
  loops: string[]
  scratch: string[]
  cgroups: string[]
}

export interface BuildOptions {
  signal?: AbortSignal
  onProgress?: (layerIndex: number, phase: string, done: number, total: number) => void
  onLog?: (line: string) => void
  // A plan made for this build already (BuildService plans first, to answer from the catalog).
  plan?: Plan
}

export interface LayerResult {
  key: string
  step: StepKind
  cached: boolean
  seconds: number
}

export interface BuildResult {
  // The image key: its top layer's key.
  key: string
  volumeKey: string
  layers: LayerResult[]
}

interface Shared {
  // Whether the layer had to be built.
  promise: Promise<boolean>
  controller: AbortController
  waiters: number
  logs: Set<(line: string) => void>
  progress: Set<NonNullable<BuildOptions['onProgress']>>
}

export class Builder {
  readonly store: LayerStore
  readonly workDir: string
  readonly repos: RepoStates
  #aptDir: string
  #host: Promise<HostInfo> | undefined
  #inflight = new Map<string, Shared>()
  #recovered: Promise<Recovered> | undefined
  #limits: Limits
  #dataDir: string
  #aptQueue: Promise<unknown> = Promise.resolve()
  // When each layer was last asked for (ms since the epoch), for LRU eviction; kept in workDir.
  #used: Map<string, number> | undefined
  #usedWrite: Promise<void> = Promise.resolve()

  constructor (options: BuilderOptions) {
    this.store = options.store
    this.workDir = options.workDir
    this.#aptDir = options.aptDir ?? '/etc/apt'
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits }
    this.#dataDir = options.dataDir ?? path.dirname(path.resolve(options.workDir))
    this.repos = options.repoStates ?? new RepoStates()
  }

  get limits (): Limits { return { ...this.#limits } }

  // The daemon's config; applies to steps started from now on.
  setLimits (limits: Partial<Limits>): void {
    this.#limits = { ...this.#limits, ...limits }
  }

  // Whether steps get memory, CPU and process limits on this host, and if not, why.
  cgroups (): Promise<CgroupSupport> {
    return cgroupSupport()
  }

  parseSpec (text: string, format: SpecFormat, options?: ParseOptions): ImageSpec {
    return parseSpec(text, format, options)
  }

  // The spec's layers, keyed by the states of the repositories they read: checked (at most
  // once a minute per suite), or as the spec's `snapshot` pins them.
  async plan (spec: ImageSpec): Promise<Plan> {
    const pin = spec.snapshot !== undefined ? parseSnapshot(spec.snapshot) : undefined
    return planBuild(spec, await this.#hostInfo(), refs => this.repos.resolve(refs, pin))
  }

  // Takes down what a crashed run left: mounts under the work dir (deepest first), processes
  // rooted there, loop devices on files under the data dir that no mount uses (a deleted
  // volume's included), mount points and bootstrap trees, and the steps' cgroups. Steps'
  // own mounts die with their sandboxes; this is for what an older osfarmd, or a crash in
  // the middle of a sandbox's teardown, leaves. The store's recover() removes the volumes.
  // The daemon runs it at start, before it serves anything; the first build runs it too.
  recover (): Promise<Recovered> {
    this.#recovered ??= (async () => {
      const out: Recovered = { mounts: [], loops: [], scratch: [], cgroups: [] }
      await killRootedIn(this.workDir)
      const info = await fs.readFile('/proc/self/mountinfo', 'utf8')
      const sources = new Map(info.split('\n').filter(Boolean).map(l => {
        const f = l.split(' ')
        return [f[4]!, f[f.indexOf('-') + 2]!] as const
      }))
      for (const point of await mountsUnder(this.workDir)) {
        const source = sources.get(point)
        await umount(point)
        out.mounts.push(point)
        if (source?.startsWith('/dev/loop')) await detach(source).catch(() => {})
      }
      const mounted = new Set((await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(Boolean).map(l => { const f = l.split(' '); return f[f.indexOf('-') + 2]! }))
      for (const loop of await loopDevices()) {
        if (!loop.file.startsWith(this.#dataDir + '/') || mounted.has(loop.device)) continue
        await detach(loop.device).then(() => out.loops.push(loop.device), () => {})
      }
      for (const name of await fs.readdir(this.workDir).catch(() => [] as string[])) {
        if (!/^(mnt|base)-/.test(name)) continue
        await removeScratch(path.join(this.workDir, name))
        out.scratch.push(name)
      }
      out.cgroups = await removeStaleCgroups(this.workDir)
      return out
    })()
    return this.#recovered
  }

  async build (spec: ImageSpec, options: BuildOptions = {}): Promise<BuildResult> {
    await this.recover()
    const plan = options.plan ?? await this.plan(spec)
    const { signal } = options
    if (signal?.aborted) throw JOB_CANCELLED()
    const results: LayerResult[] = plan.layers.map(l => ({ key: l.key, step: l.kind, cached: true, seconds: 0 }))

    // The highest layer already committed: everything below it is not needed at all.
    let from = 0
    for (let i = plan.layers.length - 1; i >= 0; i--) {
      const info = await this.store.stat(plan.layers[i]!.key)
      if (info?.kind === 'committed' && !this.#inflight.has(plan.layers[i]!.key)) { from = i + 1; break }
    }
    for (let i = 0; i < from; i++) options.onProgress?.(i, 'cached', 1, 1)

    for (let i = from; i < plan.layers.length; i++) {
      const layer = plan.layers[i]!
      const started = performance.now()
      const built = await this.#layer(plan, layer, options)
      results[i] = { key: layer.key, step: layer.kind, cached: !built, seconds: Math.round(performance.now() - started) / 1000 }
      options.onProgress?.(i, built ? 'done' : 'cached', 1, 1)
    }
    await this.#touch(plan.layers.map(l => l.key))
    return { key: plan.key, volumeKey: plan.key, layers: results }
  }

  // Removes least recently used layers until the store's volumes take at most maxBytes. Layers
  // in `keep` (the volumes of registered images) and layers being built are never removed; a
  // removed lower layer costs only a rebuild (children are independent volumes).
  async prune (maxBytes: number, keep: Set<string>): Promise<string[]> {
    const volumes = await this.store.list()
    let total = volumes.reduce((n, v) => n + v.allocated, 0)
    const used = await this.#usage()
    const candidates = volumes
      .filter(v => v.kind === 'committed' && LAYER_KEY.test(v.key) && !keep.has(v.key) && !this.#inflight.has(v.key))
      .sort((a, b) => (used.get(a.key) ?? 0) - (used.get(b.key) ?? 0))
    const removed: string[] = []
    for (const v of candidates) {
      if (total <= maxBytes) break
      await this.store.remove(v.key)
      used.delete(v.key)
      total -= v.allocated
      removed.push(v.key)
    }
    if (removed.length) await this.#saveUsage()
    return removed
  }

  // Removes the given layers, except those in keep or being built; returns the removed keys.
  async removeLayers (keys: string[], keep: Set<string>): Promise<string[]> {
    const removed: string[] = []
    for (const key of keys) {
      if (keep.has(key) || this.#inflight.has(key) || !LAYER_KEY.test(key)) continue
      const info = await this.store.stat(key)
      if (info?.kind !== 'committed') continue
      await this.store.remove(key)
      ;(await this.#usage()).delete(key)
      removed.push(key)
    }
    if (removed.length) await this.#saveUsage()
    return removed
  }

  async #usage (): Promise<Map<string, number>> {
    if (!this.#used) {
      const text = await fs.readFile(path.join(this.workDir, USAGE_FILE), 'utf8').catch(() => '{}')
      let parsed: Record<string, number> = {}
      try { parsed = JSON.parse(text) } catch {}
      this.#used ??= new Map(Object.entries(parsed).filter(([k, v]) => LAYER_KEY.test(k) && typeof v === 'number'))
    }
    return this.#used
  }

  async #touch (keys: string[]): Promise<void> {
    const used = await this.#usage()
    const now = Date.now()
    for (const k of keys) used.set(k, now)
    await this.#saveUsage()
  }

  // Written whole to a temporary file and renamed; writes are serialised.
  #saveUsage (): Promise<void> {
    const write = async () => {
      await fs.mkdir(this.workDir, { recursive: true })
      const file = path.join(this.workDir, USAGE_FILE)
      // The record only orders eviction: a full disk keeps the old one and fails no build
      // (the step that hits it reports the full disk).
      const written = await fs.writeFile(file + '.tmp', JSON.stringify(Object.fromEntries(this.#used ?? []))).then(() => true, async err => {
        if (err.code !== 'ENOSPC') throw err
        await fs.rm(file + '.tmp', { force: true })
        return false
      })
      if (written) await fs.rename(file + '.tmp', file)
    }
    this.#usedWrite = this.#usedWrite.then(write, write)
    return this.#usedWrite
  }

  // Resolves true if this call built the layer (or joined the job that did), false if the
  // layer was already there.
  async #layer (plan: Plan, layer: PlannedLayer, options: BuildOptions): Promise<boolean> {
    let entry = this.#inflight.get(layer.key)
    if (entry) {
      options.onProgress?.(layer.index, 'waiting', 0, 1)
    } else {
      const controller = new AbortController()
      const created: Shared = { controller, waiters: 0, logs: new Set(), progress: new Set(), promise: Promise.resolve(false) }
      const log = (line: string) => { for (const l of created.logs) l(line) }
      const progress = (phase: string, done: number, total: number) => { for (const p of created.progress) p(layer.index, phase, done, total) }
      // Registered before the first await, so a concurrent build of this layer joins this job.
      created.promise = this.#ensure(plan, layer, controller.signal, log, progress).finally(() => this.#inflight.delete(layer.key))
      this.#inflight.set(layer.key, created)
      entry = created
    }
    return this.#join(entry, options)
  }

  // Waits for a shared layer job. The job is cancelled only when every waiter has given up.
  async #join (entry: Shared, options: BuildOptions): Promise<boolean> {
    entry.waiters++
    if (options.onLog) entry.logs.add(options.onLog)
    if (options.onProgress) entry.progress.add(options.onProgress)
    const signal = options.signal
    let onAbort: (() => void) | undefined
    try {
      if (!signal) return await entry.promise
      return await new Promise<boolean>((resolve, reject) => {
        onAbort = () => reject(JOB_CANCELLED())
        if (signal.aborted) return onAbort()
        signal.addEventListener('abort', onAbort, { once: true })
        entry.promise.then(resolve, reject)
      })
    } finally {
      if (onAbort) signal!.removeEventListener('abort', onAbort)
      if (options.onLog) entry.logs.delete(options.onLog)
      if (options.onProgress) entry.progress.delete(options.onProgress)
      // The last waiter to give up cancels the job, and returns once it has cleaned up.
      if (--entry.waiters === 0 && signal?.aborted) {
        entry.controller.abort()
        await entry.promise.catch(() => {})
      }
    }
  }

  async #ensure (plan: Plan, layer: PlannedLayer, signal: AbortSignal, log: (line: string) => void, progress: (phase: string, done: number, total: number) => void): Promise<boolean> {
    const existing = await this.store.stat(layer.key)
    if (existing?.kind === 'committed') return false
    // An active volume nobody here is building is a crashed build's leftover.
    if (existing) await this.store.remove(layer.key)
    await this.#make(plan, layer, signal, log, progress)
    return true
  }

  async #make (plan: Plan, layer: PlannedLayer, signal: AbortSignal, log: (line: string) => void, progress: (phase: string, done: number, total: number) => void): Promise<VolumeInfo> {
    const { spec } = plan
    log(`layer ${layer.index} ${layer.kind} ${layer.key}`)
    progress('snapshot', 0, 1)
    let vol: VolumeInfo
    try {
      vol = await this.store.prepare(layer.key, layer.parent ? { parent: layer.parent } : { size: spec.size })
    } catch (err) {
      if (err instanceof OsfarmError && err.code === 'VOLUME_EXISTS') throw VOLUME_EXISTS(`layer ${layer.key} is being built elsewhere`)
      throw err
    }
    try {
      if (layer.kind === 'base') {
        await this.#base(plan, vol, signal, log, progress)
      } else {
        await fs.mkdir(this.workDir, { recursive: true })
        const scratch = await fs.mkdtemp(path.join(this.workDir, 'mnt-'))
        const job: LayerJob = {
          volume: vol.path,
          scratch,
          epoch: BUILD_EPOCH,
          step: layer.kind,
          spec,
          ...(layer.kind === 'packages' ? { packages: layer.step.packages as string[], aptCache: await this.#aptCache() } : {}),
          ...(layer.step.initramfs ? { initramfs: layer.step.initramfs as string[] } : {}),
          ...(layer.kind === 'files' ? { sources: [...plan.sources] } : {})
        }
        const run = () => runStep<StrayTimes[]>(job as unknown as Record<string, unknown>, { signal, log, progress, limits: this.#limits, workDir: this.workDir, what: `the ${layer.kind} step` })
        // The sandbox has ended when run() settles, and its mounts with it: only the scratch
        // dir (mount points, the overlay's upper filesystem image) is left to remove.
        const stray = await (layer.kind === 'packages' ? this.#serialApt(run) : run()).finally(() => removeScratch(scratch).catch(() => {}))
        await normalizeTimes(vol.path, BUILD_EPOCH, stray, (await scanInodes(vol.path)).dirtyFree)
        await fixChecksums(vol.path, BUILD_EPOCH, signal)
        await resetSuperblock(vol.path, BUILD_EPOCH, derivedUuid(layer.key, 'uuid'))
      }
      if (signal.aborted) throw JOB_CANCELLED()
      progress('commit', 0, 1)
      const committed = await this.store.commit(layer.key)
      log(`layer ${layer.index} ${layer.kind} committed`)
      return committed
    } catch (err) {
      // Asked before the layer is removed, which frees what it took.
      // Any failure: a full host shows inside a step as ENOSPC, EIO or a corrupt scratch filesystem.
      const full = signal.aborted ? undefined : await hostFull([path.dirname(vol.path), this.workDir])
      await this.store.remove(layer.key).catch(() => {})
      if (signal.aborted) throw JOB_CANCELLED()
      if (full) throw hostFullError(`the ${layer.kind} step`, full)
      throw err instanceof OsfarmError ? err : BUILD_FAILED(`${layer.kind} step: ${(err as Error).message}`)
    }
  }

  async #base (plan: Plan, vol: VolumeInfo, signal: AbortSignal, log: (line: string) => void, progress: (phase: string, done: number, total: number) => void): Promise<void> {
    await fs.mkdir(this.workDir, { recursive: true })
    const scratch = await fs.mkdtemp(path.join(this.workDir, 'base-'))
    const dir = path.join(scratch, 'root')
    try {
      await fs.mkdir(dir)
      progress('bootstrap', 0, 1)
      await toolSandbox.run({ workDir: this.workDir, limits: this.#limits }, () => plan.base.build({ dir, epoch: BUILD_EPOCH, signal, onLine: log }))
      const bytes = await treeBytes(dir, BUILD_EPOCH)
      // ext4 needs room for its metadata too: refuse early, with numbers, rather than half-way.
      if (bytes * 1.05 + (16 << 20) > plan.spec.size) {
        throw SIZE_TOO_SMALL(`the base needs about ${Math.ceil((bytes * 1.05 + (16 << 20)) / 2 ** 20)} MiB; size is ${Math.floor(plan.spec.size / 2 ** 20)} MiB`)
      }
      progress('mkfs', 0, 1)
      await makeFs(vol.path, {
        from: dir,
        uuid: derivedUuid(plan.layers[0]!.key, 'uuid'),
        hashSeed: derivedUuid(plan.layers[0]!.key, 'hash_seed'),
        time: BUILD_EPOCH,
        confDir: scratch,
        signal,
        onLine: log
      })
      // mke2fs -d copies each file's atime and ctime: set them (and crtime) to the epoch.
      progress('normalize', 0, 1)
      const { used } = await scanInodes(vol.path)
      await normalizeTimes(vol.path, BUILD_EPOCH, used.map(ino => ({ ino, late: false })))
      await resetSuperblock(vol.path, BUILD_EPOCH, derivedUuid(plan.layers[0]!.key, 'uuid'))
    } finally {
      await removeScratch(scratch)
    }
  }

  // apt steps share one cache of lists and packages, one at a time.
  #serialApt<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.#aptQueue.then(fn, fn)
    this.#aptQueue = run.catch(() => {})
    return run
  }

  async #aptCache (): Promise<{ lists: string, archives: string }> {
    // The steps bind these in: they must be directories of the daemon's, not links.
    const lists = path.join(this.workDir, 'apt', 'lists')
    const archives = path.join(this.workDir, 'apt', 'archives')
    await fs.mkdir(path.join(lists, 'partial'), { recursive: true })
    await fs.mkdir(path.join(archives, 'partial'), { recursive: true })
    return { lists, archives }
  }

  #hostInfo (): Promise<HostInfo> {
    this.#host ??= (async () => ({ sources: await readHostSources(this.#aptDir), mmdebstrap: await hasMmdebstrap() }))()
    return this.#host
  }
}

// Removes a bootstrap tree, but only once nothing is mounted in it: a bootstrap tool killed
// half-way can leave its chroot's /proc, /sys or device binds mounted, and a recursive delete
// must never walk into those.
async function removeScratch (scratch: string): Promise<void> {
  await killRootedIn(scratch)
  for (const point of await mountsUnder(scratch)) await umount(point)
  if ((await mountsUnder(scratch)).length) throw BUILD_FAILED(`${scratch} still has mounts; left in place`)
  await fs.rm(scratch, { recursive: true, force: true })
}

// A UUID from a layer key: the same key gives the same filesystem UUID and hash seed anywhere.
export function derivedUuid (key: string, purpose: string): string {
  const b = hashParts(['osfarm-', purpose, '\n', key]).subarray(0, 16)
  b[6] = (b[6]! & 0x0f) | 0x40
  b[8] = (b[8]! & 0x3f) | 0x80
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
