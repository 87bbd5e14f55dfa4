// The fleet: this host's identity, its fleet config (init, show, allow), the swarm's lifecycle
// (opened at start when a fleet is configured, reopened by fleet init), and the images it
// serves and advertises (every registered image; withdrawn when the last copy goes).

import type { KeyPair } from 'hyperdht'
import { BAD_PARAMS, FLEET_NOT_CONFIGURED } from '../../protocol/errors.js'
import type { FleetInfo, ImageInfo, PeerInfo } from '../../protocol/rpc.js'
import type { Advert } from '../../protocol/wire.js'
import type { Manifest } from '../blocks/manifest.js'
import { blockPool } from '../blocks/block-pool.js'
import { LocalBlocks } from '../blocks/local-blocks.js'
import type { AdvertBook } from '../adverts/advert-book.js'
import type { Catalog } from '../catalog/catalog.js'
import type { ImageService } from '../images/images.js'
import type { LayerStore } from '../store/layer-store.js'
import type { Logger } from '../log.js'
import { FleetSwarm } from './fleet-swarm.js'
import type { PeerSession } from './peer-session.js'
import type { RateLimiter } from './rate-limiter.js'
import { DEFAULT_MAX_PEERS, fleetTopic, newFleetConfig, parseHostPort, parseKey, readFleetConfig, writeFleetConfig, type FleetConfig } from './fleet-config.js'

export interface FleetDeps {
  dataDir: string
  keyPair: KeyPair
  catalog: Catalog
  store: LayerStore
  images: ImageService
  adverts: AdvertBook
  log: Logger
  serveCpuShare?: number
}

export interface FleetInitOptions {
  secret?: string
  bootstrap?: string[]
  peers?: string[]
  dhtHost?: string
  dhtPort?: number
  tcpLanes?: boolean
  tcpPort?: number
  maxPeers?: number
  uploadLimit?: number
  peerUploadLimit?: number
}

export class FleetService {
  // Where every local block is: what the swarm serves, and what fetches copy from.
  readonly local = new LocalBlocks()
  readonly #d: FleetDeps
  #swarm: FleetSwarm | undefined
  // Told of each swarm opened (fleet init reopens it): the seed and prestage services listen.
  readonly #swarmListeners: Array<(swarm: FleetSwarm) => void> = []
  #backgroundLimits: ((rootHex?: string) => RateLimiter | undefined) | undefined

  constructor (deps: FleetDeps) {
    this.#d = deps
  }

  get swarm (): FleetSwarm | undefined { return this.#swarm }
  get keyPair (): KeyPair { return this.#d.keyPair }
  get publicKey (): string { return this.#d.keyPair.publicKey.toString('hex') }

  async start (): Promise<void> {
    this.#d.images.subscribe({
      registered: (image, manifest) => { this.#onImage(image, manifest).catch(err => this.#d.log.warn('cannot advertise image', { image: image.id, error: (err as Error).message })) },
      removed: image => { this.#onImageRemoved(image).catch(err => this.#d.log.warn('cannot withdraw image', { image: image.id, error: (err as Error).message })) }
    })
    for (const image of await this.#d.catalog.listImages()) await this.#addImage(image).catch(() => {})
    const config = await readFleetConfig(this.#d.dataDir)
    if (config) await this.#open(config)
  }

  async stop (): Promise<void> {
    await this.#swarm?.close()
    this.#swarm = undefined
    this.local.close()
  }

  onSwarm (listener: (swarm: FleetSwarm) => void): void {
    this.#swarmListeners.push(listener)
    if (this.#swarm) listener(this.#swarm)
  }

  // The upload limit for background (seeding) requests for an image: the seed service's.
  setBackgroundLimits (limits: (rootHex?: string) => RateLimiter | undefined): void {
    this.#backgroundLimits = limits
  }

  // Sends adverts to the fleet, if a swarm is open.
  advertise (adverts: Advert[]): void {
    this.#swarm?.advertise(adverts)
  }

  // Connected peers' sessions (those past their Hello).
  sessions (): PeerSession[] {
    return this.#swarm ? [...this.#swarm.sessions.values()] : []
  }

  peers (): PeerInfo[] {
    return this.#swarm?.peers() ?? []
  }

  async init (opts: FleetInitOptions): Promise<FleetInfo> {
    const old = await readFleetConfig(this.#d.dataDir)
    opts.bootstrap?.forEach(parseHostPort)
    const peers = opts.peers?.map(k => parseKey(k).toString('hex'))
    const self = this.publicKey
    const config = newFleetConfig({
      secret: opts.secret ?? old?.secret,
      allow: [...new Set([self, ...(old?.allow ?? []), ...(peers ?? [])])],
      bootstrap: opts.bootstrap ?? old?.bootstrap ?? [],
      peers: peers ?? old?.peers ?? [],
      ...(opts.dhtHost || opts.dhtPort ? { dht: { host: opts.dhtHost, port: opts.dhtPort } } : old?.dht ? { dht: old.dht } : {})
    })
    if (opts.secret !== undefined && !/^[0-9a-f]{64}$/.test(opts.secret)) throw BAD_PARAMS('secret must be 64 hex digits')
    const uploadLimit = opts.uploadLimit ?? old?.uploadLimit
    const peerUploadLimit = opts.peerUploadLimit ?? old?.peerUploadLimit
    const tcpLanes = opts.tcpLanes ?? old?.tcpLanes
    const tcpPort = opts.tcpPort ?? old?.tcpPort
    const maxPeers = opts.maxPeers ?? old?.maxPeers
    if (tcpLanes !== undefined) config.tcpLanes = tcpLanes
    if (tcpPort !== undefined) config.tcpPort = tcpPort
    if (maxPeers !== undefined) config.maxPeers = maxPeers
    if (uploadLimit) config.uploadLimit = uploadLimit
    if (peerUploadLimit) config.peerUploadLimit = peerUploadLimit
    await writeFleetConfig(this.#d.dataDir, config)
    await this.#swarm?.close()
    this.#swarm = undefined
    await this.#open(config)
    return { ...this.#info(config), secret: config.secret }
  }

  async show (): Promise<FleetInfo> {
    return this.#info(await readFleetConfig(this.#d.dataDir))
  }

  async allow (key: string, allow: boolean): Promise<FleetInfo> {
    const hex = parseKey(key).toString('hex')
    const config = await readFleetConfig(this.#d.dataDir)
    if (!config) throw FLEET_NOT_CONFIGURED()
    if (allow && !config.allow.includes(hex)) config.allow.push(hex)
    if (!allow) {
      if (hex === this.publicKey) throw BAD_PARAMS('a host cannot deny itself')
      config.allow = config.allow.filter(k => k !== hex)
      config.peers = config.peers.filter(k => k !== hex)
    }
    await writeFleetConfig(this.#d.dataDir, config)
    this.#swarm?.reconfigure(config)
    return this.#info(config)
  }

  async #open (config: FleetConfig): Promise<void> {
    const self = this.publicKey
    if (!config.allow.includes(self)) config.allow = [self, ...config.allow]
    const swarm = await FleetSwarm.open({
      keyPair: this.#d.keyPair,
      config,
      source: this.local,
      log: (msg, fields) => this.#d.log.info(msg, fields as Record<string, string>),
      backgroundLimits: rootHex => this.#backgroundLimits?.(rootHex),
      serveCpuShare: this.#d.serveCpuShare
    })
    this.#swarm = swarm
    swarm.advertise(await this.#d.adverts.all())
    swarm.on('revised', (a: Advert) => {
      this.#d.adverts.revised(a).catch(err => this.#d.log.warn('cannot take a relabelled advert', { root: a.root.toString('hex'), error: (err as Error).message }))
    })
    // A host in a fleet serves and fetches blocks: its block workers start now, not with the
    // first request.
    blockPool().warm()
    for (const l of this.#swarmListeners) l(swarm)
    this.#d.log.info('fleet swarm open', { key: self, dht: JSON.stringify(swarm.address()), peers: config.allow.length - 1 })
  }

  #info (config: FleetConfig | undefined): FleetInfo {
    return {
      configured: !!config,
      publicKey: this.publicKey,
      allow: config?.allow ?? [],
      bootstrap: config?.bootstrap ?? [],
      peers: config?.peers ?? [],
      topic: config ? fleetTopic(config.secret).toString('hex') : null,
      uploadLimit: config?.uploadLimit ?? 0,
      peerUploadLimit: config?.peerUploadLimit ?? 0,
      dht: this.#swarm?.address() ?? null,
      lanePort: this.#swarm?.lanePort ?? null,
      maxPeers: config?.maxPeers ?? DEFAULT_MAX_PEERS
    }
  }

  // Called when an image is registered (import, build, fetch).
  async #onImage (image: ImageInfo, manifest?: Manifest): Promise<void> {
    await this.#addImage(image, manifest)
    const advert = await this.#d.adverts.advertFor(image)
    this.#swarm?.advertise([advert])
  }

  // Another image may share the volume or the root (the same content under two names): then
  // it stays served and advertised. Otherwise the saved advert goes too, so the same content
  // registered again is advertised under its new name and labels, not the old ones.
  async #onImageRemoved (image: ImageInfo): Promise<void> {
    const others = await this.#d.catalog.listImages()
    if (!others.some(i => i.volume === image.volume)) this.local.removeVolume(image.volume)
    if (others.some(i => i.root === image.root)) return
    this.#swarm?.withdraw(Buffer.from(image.root, 'hex'))
    await this.#d.adverts.remove(image.root)
  }

  async #addImage (image: ImageInfo, manifest?: Manifest): Promise<void> {
    const m = manifest ?? await this.#d.catalog.manifest(image.root)
    const vol = await this.#d.store.stat(image.volume)
    if (!m || !vol) return
    this.local.addVolume(image.volume, vol.path, m)
  }
}
