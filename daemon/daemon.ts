// osfarmd: owns the catalog, the layer store, the jobs and the socket. start() brings them up in
// order and stop() takes them down in reverse, so a SIGTERM leaves no half-written record and no
// stale socket.

import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { createRequire } from 'node:module'
import { BAD_CONFIG, DAEMON_ALREADY_RUNNING } from '../protocol/errors.js'
import { API_VERSION, type DaemonStatus, type Rights } from '../protocol/rpc.js'
import type { Config } from './config.js'
import { Catalog } from './catalog/catalog.js'
import { JobManager } from './jobs/jobs.js'
import { BlockHasher } from './blocks/block-hasher.js'
import { ImageService } from './images/images.js'
import { BuildService } from './builder/build-service.js'
import { RebuildService } from './builder/rebuild-service.js'
import { openStore } from './store/open-store.js'
import type { LayerStore } from './store/layer-store.js'
import { RpcServer } from './rpc/server.js'
import { StreamRegistry } from './rpc/streams.js'
import { HttpServer } from './http/http-server.js'
import { PackageIndex } from './console/package-index.js'
import { methodTable } from './rpc/methods.js'
import { recoverVolumes } from './store/recover.js'
import { FetchService } from './fetch/fetch-service.js'
import { FleetService } from './fleet/fleet-service.js'
import { loadIdentity } from './fleet/identity.js'
import { AdvertBook } from './adverts/advert-book.js'
import { SeedService } from './seed/seed-service.js'
import { PrestageService } from './prestage/prestage-service.js'
import type { Logger } from './log.js'
import type { Services } from './services.js'
import { Metrics, serveMetrics } from './metrics.js'
import { sdNotify } from './notify.js'
import { adminSocketPath } from '../protocol/rpc.js'
import type http from 'node:http'

export const VERSION: string = createRequire(import.meta.url)('../../package.json').version

// How long stop() waits for running jobs to wind down after cancelling them: a cancelled
// mmdebstrap gets up to 30 s to unmount and clean up (the unit's TimeoutStopSec is longer).
const STOP_JOBS_TIMEOUT_MS = 35_000

export class Daemon implements Services {
  readonly version = VERSION
  readonly config: Config
  readonly log: Logger
  readonly startedAt = Date.now()
  catalog!: Catalog
  store!: LayerStore
  jobs!: JobManager
  hasher!: BlockHasher
  images!: ImageService
  builds!: BuildService
  rebuilds!: RebuildService
  fleet!: FleetService
  adverts!: AdvertBook
  fetches!: FetchService
  seeds!: SeedService
  prestages!: PrestageService
  readonly packages = new PackageIndex()
  readonly streams = new StreamRegistry()
  #http: HttpServer | undefined
  readonly metrics = new Metrics()
  #rpc: RpcServer[] = []
  #metricsServer: http.Server | undefined

  constructor (config: Config, log: Logger) {
    this.config = config
    this.log = log
  }

  async start (): Promise<void> {
    const { dataDir, socket } = this.config
    await fs.mkdir(dataDir, { recursive: true, mode: 0o700 })
    this.catalog = await Catalog.open(dataDir)
    try {
      this.store = await openStore(this.config)
      const orphans = await recoverVolumes(this.store, FetchService.keepOnRecover)
      if (orphans.length) this.log.warn('removed unfinished volumes left by a crash', { volumes: orphans.join(',') })
      const stray = await this.catalog.sweepManifests()
      if (stray.length) this.log.warn('removed manifests of unfinished registrations', { roots: stray.join(',') })
      this.jobs = new JobManager(this.catalog, this.log, job => this.metrics.onJobEnd(job))
      await this.jobs.load()
      // Hashing threads start with the daemon: their memory is part of its steady state.
      this.hasher = new BlockHasher(this.config.hashThreads)
      this.hasher.start()
      // Converted downloads on their way to a caller; a crash leaves them, a start removes them.
      const streamScratch = path.join(dataDir, 'streams')
      await fs.rm(streamScratch, { recursive: true, force: true })
      this.images = new ImageService({ catalog: this.catalog, store: this.store, jobs: this.jobs, hasher: this.hasher, blockSize: this.config.blockSize, log: this.log, streams: this.streams, scratchDir: streamScratch, hostPaths: { dataDir, protectedPaths: [socket, adminSocketPath(socket)] } })
      this.builds = new BuildService({
        store: this.store,
        images: this.images,
        jobs: this.jobs,
        log: this.log,
        workDir: path.join(dataDir, 'build'),
        cacheBytes: this.config.buildCacheBytes || undefined,
        sourcesDir: path.join(dataDir, 'sources'),
        sourceLimits: { fileBytes: this.config.maxSourceBytes, rootfsBytes: this.config.maxRootfsBytes },
        streams: this.streams,
        repoHistory: this.catalog.sublevel('repo-states'),
        mirrorCheckSeconds: this.config.mirrorCheckSeconds
      })
      await this.builds.sources.start()
      // Before anything is served: what a crashed run's builds left (mounts, loop devices,
      // scratch dirs, step cgroups) goes now, whatever the first request is.
      this.builds.builder.setLimits({ timeoutMs: this.config.buildStepTimeoutSeconds * 1000, memoryBytes: this.config.buildStepMemoryBytes, cpus: this.config.buildStepCpus })
      const left = await this.builds.builder.recover()
      if (left.mounts.length || left.loops.length || left.scratch.length || left.cgroups.length) this.log.warn('removed what a crashed build left', { mounts: left.mounts.length, loops: left.loops.join(','), scratch: left.scratch.join(','), cgroups: left.cgroups.length })
      // A volume that was still mounted could not be removed above; now it can.
      if (left.mounts.length || left.loops.length) await recoverVolumes(this.store, FetchService.keepOnRecover)
      const cg = await this.builds.builder.cgroups()
      if (cg.reason) this.log.info('build steps run without some limits', { cgroups: cg.kind, reason: cg.reason })
      const keyPair = await loadIdentity(dataDir)
      this.adverts = new AdvertBook({ catalog: this.catalog, images: this.images, keyPair, advertise: a => this.fleet.advertise(a) })
      this.fleet = new FleetService({ dataDir, keyPair, catalog: this.catalog, store: this.store, images: this.images, adverts: this.adverts, log: this.log, serveCpuShare: this.config.serveCpuShare })
      this.fetches = new FetchService({ dataDir, catalog: this.catalog, store: this.store, images: this.images, jobs: this.jobs, fleet: this.fleet, adverts: this.adverts, log: this.log })
      await this.fleet.start()
      await this.fetches.start()
      this.seeds = new SeedService({ catalog: this.catalog, images: this.images, jobs: this.jobs, store: this.store, fleet: this.fleet, adverts: this.adverts, fetches: this.fetches, log: this.log })
      await this.seeds.start()
      this.rebuilds = new RebuildService({ catalog: this.catalog, builds: this.builds, jobs: this.jobs, log: this.log, checkSeconds: this.config.mirrorCheckSeconds })
      await this.rebuilds.start()
      this.prestages = new PrestageService({ dataDir, catalog: this.catalog, images: this.images, jobs: this.jobs, store: this.store, hasher: this.hasher, fleet: this.fleet, adverts: this.adverts, fetches: this.fetches, blockSize: this.config.blockSize, log: this.log })
      await this.prestages.start()
      this.#addGauges()
      const group = this.config.socketGroup === null ? null : await groupId(this.config.socketGroup)
      const table = methodTable(this)
      // The main socket is for its group: never root's rights, whoever connects. Root's is the
      // admin socket, 0600, which osfarmctl run as root picks.
      const sockets: Array<{ socket: string, mode: number, group: number | null, rights: Rights }> = [
        { socket, mode: parseInt(this.config.socketMode, 8), group, rights: this.config.writeRequiresRoot ? 'read' : 'user' },
        { socket: adminSocketPath(socket), mode: 0o600, group: null, rights: 'admin' }
      ]
      for (const s of sockets) {
        await prepareSocket(s.socket)
        const server = new RpcServer({ ...s, table, log: this.log, maxConnections: this.config.maxConnections, idleMs: this.config.idleTimeoutSeconds * 1000, streams: this.streams })
        await server.listen()
        this.#rpc.push(server)
      }
      if (this.config.metricsListen) this.#metricsServer = await serveMetrics(this.metrics, this.config.metricsListen, this.log)
      if (this.config.http.listen) {
        this.#http = new HttpServer({
          listen: this.config.http.listen,
          maxConnections: this.config.maxConnections,
          idleMs: this.config.idleTimeoutSeconds * 1000,
          table,
          services: this,
          log: this.log,
          access: { token: this.config.http.token, socket, socketReadOnly: this.config.writeRequiresRoot }
        })
        await this.#http.listen()
      }
    } catch (err) {
      await this.#http?.close()
      await this.#closeAll()
      throw err
    }
    this.log.info('osfarmd ready', { version: VERSION, socket, data: dataDir, store: this.store.backend, pid: process.pid })
    await sdNotify('READY=1', this.log)
  }

  async stop (): Promise<void> {
    this.log.info('osfarmd stopping')
    await sdNotify('STOPPING=1', this.log)
    await this.#http?.close()
    this.#http = undefined
    await Promise.all(this.#rpc.map(s => s.close()))
    this.#rpc = []
    await new Promise(resolve => this.#metricsServer ? this.#metricsServer.close(resolve) : resolve(undefined))
    await this.jobs?.stopAll(STOP_JOBS_TIMEOUT_MS)
    await this.#closeAll()
    this.log.info('osfarmd stopped')
  }

  async #closeAll (): Promise<void> {
    this.builds?.sources.stop()
    this.rebuilds?.stop()
    await this.seeds?.stop()
    await this.fleet?.stop()
    await this.hasher?.close()
    await this.store?.close()
    await this.catalog?.close()
  }

  #addGauges (): void {
    this.metrics.addGauges(async () => {
      const usage = await this.store.usage()
      const peers = this.fleet.peers()
      return [
        { name: 'osfarm_images', help: 'Images in the catalog', samples: [{ labels: {}, value: (await this.catalog.listImages()).length }] },
        { name: 'osfarm_jobs_running', help: 'Jobs running now', samples: [{ labels: {}, value: this.jobs.runningCount }] },
        { name: 'osfarm_store_bytes', help: 'Layer store bytes, used and free', samples: [{ labels: { backend: usage.backend, kind: 'used' }, value: usage.bytesUsed }, { labels: { backend: usage.backend, kind: 'free' }, value: usage.bytesFree }] },
        { name: 'osfarm_store_volumes', help: 'Volumes in the layer store', samples: [{ labels: { backend: usage.backend }, value: usage.volumes }] },
        { name: 'osfarm_peers', help: 'Fleet peers connected now', samples: [{ labels: {}, value: peers.length }] },
        { name: 'osfarm_peer_bytes', help: 'Bytes exchanged with each connected peer, in (received) and out (served)', samples: peers.flatMap(p => [{ labels: { peer: p.key, direction: 'in' }, value: p.bytesIn }, { labels: { peer: p.key, direction: 'out' }, value: p.bytesOut }]) },
        { name: 'osfarm_peer_rate_bytes_per_second', help: 'Receive rate from each connected peer', samples: peers.map(p => ({ labels: { peer: p.key }, value: p.rateIn })) }
      ]
    })
  }

  async status (): Promise<DaemonStatus> {
    const all = this.jobs.list()
    return {
      version: VERSION,
      apiVersion: API_VERSION,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      dataDir: this.config.dataDir,
      socket: this.config.socket,
      store: await this.store.usage(),
      images: (await this.catalog.listImages()).length,
      jobs: { running: this.jobs.runningCount, total: all.length }
    }
  }
}

// A live socket means another daemon; a dead one is a leftover from a crash and is removed.
async function prepareSocket (socket: string): Promise<void> {
  await fs.mkdir(path.dirname(socket), { recursive: true, mode: 0o755 })
  const st = await fs.lstat(socket).catch(() => undefined)
  if (!st) return
  if (!st.isSocket()) throw BAD_CONFIG(`${socket} exists and is not a socket`)
  const live = await new Promise<boolean>(resolve => {
    const c = net.connect(socket)
    c.once('connect', () => { c.destroy(); resolve(true) })
    c.once('error', () => resolve(false))
  })
  if (live) throw DAEMON_ALREADY_RUNNING(`another osfarmd is listening on ${socket}`)
  await fs.rm(socket, { force: true })
}

async function groupId (name: string): Promise<number> {
  const groups = await fs.readFile('/etc/group', 'utf8')
  for (const line of groups.split('\n')) {
    const [gname, , gid] = line.split(':')
    if (gname === name) return Number(gid)
  }
  throw BAD_CONFIG(`socketGroup: no group named "${name}"`)
}
