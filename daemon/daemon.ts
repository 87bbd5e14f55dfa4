// osfarmd: owns the catalog, the layer store, the jobs and the socket. start() brings them up in
// order and stop() takes them down in reverse, so a SIGTERM leaves no half-written record and no
// stale socket.

import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { createRequire } from 'node:module'
import { BAD_CONFIG, DAEMON_ALREADY_RUNNING } from '../protocol/errors.js'
import { API_VERSION, type DaemonStatus } from '../protocol/rpc.js'
import type { Config } from './config.js'
import { Catalog } from './catalog/catalog.js'
import { JobManager } from './jobs/jobs.js'
import { BlockHasher } from './blocks/block-hasher.js'
import { ImageService } from './images/images.js'
import { BuildService } from './build/build-service.js'
import { openStore } from './store/open-store.js'
import type { LayerStore } from './store/layer-store.js'
import { RpcServer } from './rpc/server.js'
import { methodTable } from './rpc/methods.js'
import { recoverVolumes, TransferService } from './transfer/transfer-service.js'
import type { Logger } from './log.js'

export const VERSION: string = createRequire(import.meta.url)('../../package.json').version

// How long stop() waits for running jobs to wind down after cancelling them.
const STOP_JOBS_TIMEOUT_MS = 10_000

export class Daemon {
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
  transfers!: TransferService
  #rpc: RpcServer | undefined

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
      const orphans = await recoverVolumes(this.store, TransferService.keepOnRecover)
      if (orphans.length) this.log.warn('removed unfinished volumes left by a crash', { volumes: orphans.join(',') })
      const unregistered = await this.catalog.recoverPending()
      if (unregistered.length) this.log.warn('removed index entries of unfinished registrations', { volumes: unregistered.join(',') })
      this.jobs = new JobManager(this.catalog, this.log)
      await this.jobs.load()
      // Hashing threads start with the daemon: their memory is part of its steady state.
      this.hasher = new BlockHasher(this.config.hashThreads)
      this.hasher.start()
      this.images = new ImageService({ catalog: this.catalog, store: this.store, jobs: this.jobs, hasher: this.hasher, blockSize: this.config.blockSize, log: this.log })
      this.builds = new BuildService({ store: this.store, images: this.images, jobs: this.jobs, log: this.log, workDir: path.join(dataDir, 'build') })
      this.transfers = new TransferService({ dataDir, catalog: this.catalog, store: this.store, images: this.images, jobs: this.jobs, hasher: this.hasher, log: this.log })
      await this.transfers.start()
      await prepareSocket(socket)
      this.#rpc = new RpcServer({
        socket,
        mode: parseInt(this.config.socketMode, 8),
        group: this.config.socketGroup === null ? null : await groupId(this.config.socketGroup),
        table: methodTable(this),
        log: this.log
      })
      await this.#rpc.listen()
    } catch (err) {
      await this.#closeAll()
      throw err
    }
    this.log.info('osfarmd ready', { version: VERSION, socket, data: dataDir, store: this.store.backend, pid: process.pid })
  }

  async stop (): Promise<void> {
    this.log.info('osfarmd stopping')
    await this.#rpc?.close()
    this.#rpc = undefined
    await this.jobs?.stopAll(STOP_JOBS_TIMEOUT_MS)
    await this.#closeAll()
    this.log.info('osfarmd stopped')
  }

  async #closeAll (): Promise<void> {
    await this.transfers?.stop()
    await this.hasher?.close()
    await this.store?.close()
    await this.catalog?.close()
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
