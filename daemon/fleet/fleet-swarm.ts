// The daemon's place in its fleet: one Hyperswarm on the fleet's own DHT, a firewall that
// refuses every key off the allow-list before any message, the fleet and per-root topics, one
// PeerSession per allowed peer, and the adverts and Have bitfields peers sent us.

import { EventEmitter } from 'node:events'
import os from 'node:os'
import Hyperswarm, { type NoiseStream, type PeerDiscovery, type UdxSocket } from 'hyperswarm'
import DHT, { type KeyPair } from 'hyperdht'
import { supersedes, Codec, MAX_HAVE_BITS, type Advert, type CodecId, type Have, type MessageMap } from '../../protocol/wire.js'
import { PROTOCOL_ERROR } from '../../protocol/errors.js'
import type { PeerInfo } from '../../protocol/rpc.js'
import { DEFAULT_MAX_PEERS, fleetTopic, parseHostPort, rootTopic, type FleetConfig } from './fleet-config.js'
import { PeerSession } from './peer-session.js'
import { OfferBook } from './offer-book.js'
import { checkAdvertSignatures } from '../adverts/sign-advert.js'
import { Revisions } from '../adverts/revisions.js'
import type { BlockBatch, BlockPlaces, ServiceMessage, SessionHost } from './session-host.js'
import { RateLimiter } from './rate-limiter.js'
import { TcpLanes } from './tcp-lanes.js'
import type { FleetEvents } from './fleet-events.js'
import type { DeltaVersion } from '../blocks/manifest-delta.js'

// Images whose root topics we announce; past this only the fleet topic finds us.
const MAX_ROOT_TOPICS = 256
const MAX_ADVERTS_PER_PEER = 10_000
// While an allowed host is not connected, the fleet topic is announced and looked up again this
// often (a young DHT can store an announce where a later lookup does not look).
const REDISCOVER_MS = 5_000
// Receive buffer asked for on every UDP socket the swarm uses (the kernel caps it at
// net.core.rmem_max). With the 208 KiB default, a busy moment of the event loop at link speed
// overflowed it, and UDX slows down at every drop. The send buffer stays as it is: a large one
// let UDX queue past a shaped link's queue, which dropped the excess (docs/measurements.md).
const RECV_BUFFER_BYTES = 4 << 20
// How long opening the swarm waits for the DHT node's reachability test (see #checkReachable).
const REACHABILITY_CHECK_MS = 3_000

// What the swarm serves from: manifests and blocks of this host.
export interface BlockSource {
  readManifest (root: Buffer): Promise<Buffer | undefined>
  readBlocks (hashes: Buffer): Promise<BlockBatch>
  locateBlocks? (hashes: Buffer): BlockPlaces
  readManifestDelta? (root: Buffer, base: Buffer, version: DeltaVersion): Promise<Buffer | undefined>
}

export interface FleetSwarmOptions {
  keyPair: KeyPair
  config: FleetConfig
  source: BlockSource
  hostName?: string
  codecs?: CodecId[]
  log?: (msg: string, fields?: Record<string, unknown>) => void
  // The upload limit for background (seeding) requests for an image (none named: the strictest).
  backgroundLimits?: (rootHex?: string) => RateLimiter | undefined
  serveCpuShare?: number
}

export class FleetSwarm extends EventEmitter<FleetEvents> implements SessionHost {
  readonly keyPair: KeyPair
  readonly hostName: string
  readonly codecs: CodecId[]
  readonly uploadLimiter: RateLimiter
  readonly backgroundLimits: ((rootHex?: string) => RateLimiter | undefined) | undefined
  readonly serveCpuShare: number | undefined
  readonly sessions = new Map<string, PeerSession>()
  config: FleetConfig
  #swarm: Hyperswarm
  #dht: DHT
  #allow: Set<string>
  #adverts = new Map<string, Advert>()
  readonly #offers = new OfferBook()
  // Adverts meant for one peer only (pre-staging): peer hex → root hex → advert.
  #targeted = new Map<string, Map<string, Advert>>()
  // The newest relabelling heard of each builder's advert for a root (root + builder, hex).
  readonly #revisions = new Revisions()
  #topics = new Map<string, PeerDiscovery>()
  #fleet: PeerDiscovery | undefined
  #source: BlockSource
  #log: NonNullable<FleetSwarmOptions['log']>
  #lanes: TcpLanes | undefined
  #closed = false
  #rediscover: NodeJS.Timeout | undefined
  readonly #refused = new Set<string>()

  private constructor (options: FleetSwarmOptions) {
    super()
    this.setMaxListeners(0)
    this.keyPair = options.keyPair
    this.config = options.config
    this.hostName = options.hostName ?? os.hostname()
    this.codecs = options.codecs ?? [Codec.RAW, Codec.ZSTD]
    this.uploadLimiter = new RateLimiter(options.config.uploadLimit ?? 0)
    this.backgroundLimits = options.backgroundLimits
    this.serveCpuShare = options.serveCpuShare
    this.#source = options.source
    this.#log = options.log ?? (() => {})
    this.#allow = new Set(options.config.allow)
    // Always an explicit bootstrap list: an empty one makes this node its own DHT, and the
    // public DHT is never contacted.
    this.#dht = new DHT({
      keyPair: options.keyPair,
      bootstrap: options.config.bootstrap.map(parseHostPort),
      ...(options.config.dht?.host ? { host: options.config.dht.host } : {}),
      ...(options.config.dht?.port ? { port: options.config.dht.port } : {})
    })
    this.#swarm = new Hyperswarm({
      keyPair: options.keyPair,
      dht: this.#dht,
      maxPeers: this.#dialLimit,
      firewall: remoteKey => !this.#admits(remoteKey)
    })
    this.#swarm.on('connection', (conn: NoiseStream) => this.#onConnection(conn))
  }

  static async open (options: FleetSwarmOptions): Promise<FleetSwarm> {
    const s = new FleetSwarm(options)
    await s.#start()
    return s
  }

  get publicKey (): string { return this.keyPair.publicKey.toString('hex') }
  get peerUploadLimit (): number { return this.config.peerUploadLimit ?? 0 }
  get lanePort (): number | undefined { return this.#lanes?.port }
  get maxPeers (): number { return this.config.maxPeers ?? DEFAULT_MAX_PEERS }

  // Every allowed host fits in this host's sessions: the fleet is a full mesh.
  get #meshed (): boolean { return this.#allow.size - 1 <= this.maxPeers }

  // Sessions past which Hyperswarm dials no more: in a larger fleet half of those it accepts,
  // so that a host joining late still finds hosts with room for it.
  get #dialLimit (): number { return this.#meshed ? this.maxPeers : Math.max(1, Math.floor(this.maxPeers / 2)) }

  // The firewall: a key off the allow-list is refused before any message ('refused', logged
  // once per key), which is what tests of a refusal wait for. An allowed host is refused too
  // while this one has maxPeers sessions (Hyperswarm bounds the connections it dials, not those
  // it accepts).
  #admits (key: Buffer): boolean {
    if (this.isAllowed(key)) return this.sessions.size < this.maxPeers || this.sessions.has(key.toString('hex'))
    const hex = key.toString('hex')
    if (!this.#refused.has(hex)) {
      this.#refused.add(hex)
      this.#log('peer refused: not on the allow-list', { key: hex })
    }
    this.emit('refused', key)
    return false
  }

  isAllowed (key: Buffer): boolean {
    return this.#allow.has(key.toString('hex'))
  }

  async #start (): Promise<void> {
    await this.#dht.fullyBootstrapped()
    await this.#checkReachable()
    widenBuffers(this.#dht.io.serverSocket)
    widenBuffers(this.#dht.io.clientSocket)
    if (this.config.tcpLanes !== false) this.#lanes = await TcpLanes.listen(this, this.config.dht?.host ?? '0.0.0.0', this.config.tcpPort ?? this.#dht.address()?.port ?? 0, this.#log)
    this.#fleet = this.#swarm.join(fleetTopic(this.config.secret), { server: true, client: true })
    for (const peer of this.config.peers) this.#swarm.joinPeer(Buffer.from(peer, 'hex'))
    await this.#fleet.flushed()
    this.#rediscover = setInterval(() => this.#lookAgain(), REDISCOVER_MS)
    this.#rediscover.unref()
  }

  // dht-rpc tests whether this node is reachable (not "firewalled") at boot only when the answer
  // to one quick PING_NAT beats the end of its bootstrap query, and tests again only after ~20
  // minutes. On a fleet's own small DHT (three bootstrap nodes a LAN away) the query usually won:
  // about half the hosts in the lab stayed "firewalled" though every host reached every other.
  // Two such hosts must holepunch, and hyperdht's holepuncher classifies its NAT from pings to at
  // least three routing-table nodes, which such a DHT cannot give: the server aborted the punch
  // (NAT unknown) just after its socket had echoed the client's probe, the client opened a stream
  // to that dead socket, and the session timed out ~13 s later, attempt after attempt.
  // So the test is run here, until it decides (bounded): a host the DHT nodes reach on its server
  // socket is marked reachable and connections to it go direct. A host behind a NAT or a firewall
  // fails the test, stays firewalled and holepunches as before.
  async #checkReachable (): Promise<void> {
    const dht = this.#dht
    const end = Date.now() + REACHABILITY_CHECK_MS
    while (dht.firewalled && typeof dht._updateNetworkState === 'function' && !this.#closed && Date.now() < end) {
      const wait = new Promise<false>(resolve => setTimeout(resolve, Math.max(0, end - Date.now()), false).unref())
      if (await Promise.race([dht._updateNetworkState(true).catch(() => false), wait])) break
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    if (dht.firewalled) this.#log('dht node not reachable from the bootstrap nodes: connections will holepunch', { bootstrap: this.config.bootstrap.join(',') })
  }

  // Applies a changed config: allow-list (denied peers are disconnected), direct peers, limits.
  reconfigure (config: FleetConfig): void {
    const before = this.#allow
    this.config = config
    this.#allow = new Set(config.allow)
    this.#swarm.maxPeers = this.#dialLimit
    this.uploadLimiter.rate = config.uploadLimit ?? 0
    for (const [hex, s] of this.sessions) {
      if (!this.#allow.has(hex)) s.destroy(PROTOCOL_ERROR('host removed from the allow-list'))
    }
    for (const peer of config.peers) if (this.#allow.has(peer)) this.#swarm.joinPeer(Buffer.from(peer, 'hex'))
    // A host allowed just now was refused (and so banned) before: look for it again.
    if ([...this.#allow].some(k => !before.has(k))) this.#lookAgain()
  }

  // Looks again for allowed hosts we have no session with. Hyperswarm bans a key its firewall
  // refused and stops trying a peer after a few failed attempts (both happen while two hosts
  // allow each other one after the other, or under load); for an allowed host both are undone
  // before the topic is looked up again, so the lookup queues it afresh.
  #lookAgain (): void {
    if (this.#closed) return
    // A fleet larger than the sessions a host keeps: look again only while it has few.
    if (!this.#meshed) {
      if (this.sessions.size < this.maxPeers / 2) this.#fleet?.refresh({ client: true, server: true }).catch(() => {})
      return
    }
    let missing = false
    for (const hex of this.#allow) {
      if (hex === this.publicKey || this.sessions.has(hex)) continue
      missing = true
      const info = this.#swarm.peers.get(hex)
      if (!info) continue
      info.ban(false)
      info._reset?.()
    }
    if (missing) this.#fleet?.refresh({ client: true, server: true }).catch(() => {})
  }

  // Flushes pending DHT work: after it, every reachable peer of the joined topics is connected.
  async flush (): Promise<void> {
    await this.#swarm.flush()
  }

  #onConnection (conn: NoiseStream): void {
    const key = conn.remotePublicKey
    const hex = key.toString('hex')
    conn.on('error', () => {})
    if (!this.isAllowed(key) || this.#closed) {
      conn.destroy()
      return
    }
    // A holepunched connection may run on a socket of its own.
    widenBuffers(conn.rawStream?.socket)
    const address = conn.rawStream?.remoteHost ? `${conn.rawStream.remoteHost}:${conn.rawStream.remotePort}` : ''
    const session = new PeerSession(conn, key, this, address)
    // Hyperswarm keeps one connection per key; a newer one replaces the older.
    this.sessions.get(hex)?.destroy()
    this.sessions.set(hex, session)
    session.on('close', (err?: Error) => {
      if (this.sessions.get(hex) === session) this.sessions.delete(hex)
      if (err) this.#log('peer session ended', { peer: hex.slice(0, 16), error: err.message })
      this.emit('peer-closed', session)
    })
  }

  // SessionHost: what a session asks of its daemon.
  helloAdverts (): Advert[] {
    return [...this.#adverts.values()].slice(0, 1000)
  }

  onHello (session: PeerSession): void {
    this.#log('peer connected', { peer: session.remoteHex.slice(0, 16), host: session.remoteHello?.host, address: session.address })
    // Adverts past the Hello's first 1000, and those made between our Hello and theirs (advertise()
    // skips sessions still waiting for a Hello).
    const sent = new Set(session.helloAdverts)
    const rest = [...this.#adverts.values()].filter(a => !sent.has(a))
    if (rest.length) session.sendAdverts(rest)
    const mine = this.#targeted.get(session.remoteHex)
    if (mine?.size) session.sendAdverts([...mine.values()])
    session.sendOffers(this.offers())
    this.#lanes?.offer(session)
    this.emit('peer', session)
  }

  onAdverts (session: PeerSession, adverts: Advert[]): void {
    for (const a of adverts) {
      checkAdvertSignatures(a)
      if (session.adverts.size >= MAX_ADVERTS_PER_PEER) throw PROTOCOL_ERROR('too many adverts')
      const hex = a.root.toString('hex')
      session.adverts.set(hex, this.#remember(a))
      session.haves.delete(hex)
      this.emit('holder', hex, session)
    }
    this.#passOn(adverts, session)
  }

  // Adverts a peer heard of: remembered as offers and passed on, once each.
  onOffers (session: PeerSession, adverts: Advert[]): void {
    for (const a of adverts) checkAdvertSignatures(a)
    this.#passOn(adverts, session)
  }

  // Adverts of images this host does not hold that it heard of (for seed policies).
  offers (): Advert[] {
    return this.#offers.all()
  }

  // A fleet larger than one host's connections hears of images through its peers: an advert
  // new here goes on to every other session (one that reads offers), so it crosses the fleet
  // in a few hops, each host sending it to at most maxPeers peers once.
  #passOn (adverts: Advert[], from: PeerSession): void {
    const fresh = this.#offers.add(adverts.filter(a => !this.#adverts.has(a.root.toString('hex'))))
    if (!fresh.length) return
    for (const s of this.sessions.values()) if (s !== from && s.remoteHello) s.sendOffers(fresh)
    this.emit('offer', fresh)
  }

  // The newest relabelling heard of `a` (the builder's own, or a holder's copy of it), or `a`.
  newest (a: Advert): Advert {
    return this.#revisions.newest(a)
  }

  // The newest of `a` and the relabellings of it heard before (revisions.ts). A newer one
  // replaces the older in every session and is announced ('revised'): holders take it and pass
  // it on.
  #remember (advert: Advert): Advert {
    const { advert: a, revised } = this.#revisions.remember(advert)
    if (!revised) return a
    const hex = a.root.toString('hex')
    for (const s of this.sessions.values()) {
      const old = s.adverts.get(hex)
      if (old && supersedes(a, old)) s.adverts.set(hex, a)
    }
    this.emit('revised', a)
    return a
  }

  onHave (session: PeerSession, have: Have): void {
    const hex = have.root.toString('hex')
    if (session.adverts.has(hex)) return
    const need = (have.start >> 3) + have.bitfield.length
    if (need * 8 > 64 * MAX_HAVE_BITS) throw PROTOCOL_ERROR('Have bitfield too large')
    let bits = session.haves.get(hex)
    if (!bits || bits.length < need) {
      const grown = Buffer.alloc(need)
      bits?.copy(grown)
      bits = grown
    }
    have.bitfield.copy(bits, have.start >> 3)
    session.haves.set(hex, bits)
    // The range it announced, in block indices: fetches look there for what is new.
    this.emit('holder', hex, session, have.start & ~7, have.bitfield.length * 8)
  }

  readManifest (root: Buffer): Promise<Buffer | undefined> {
    return this.#source.readManifest(root)
  }

  readManifestDelta (root: Buffer, base: Buffer, version: DeltaVersion): Promise<Buffer | undefined> {
    return this.#source.readManifestDelta?.(root, base, version) ?? Promise.resolve(undefined)
  }

  onWithdraw (session: PeerSession, roots: Buffer[]): void {
    for (const root of roots) {
      const hex = root.toString('hex')
      session.adverts.delete(hex)
      session.haves.delete(hex)
      this.emit('withdrawn', hex, session)
    }
  }

  // Stage, StageStatus and SeedDefaults go to whichever service listens.
  onService (session: PeerSession, msg: ServiceMessage): void {
    switch (msg.type) {
      case 'Stage': this.emit('Stage', session, msg.body); break
      case 'StageStatus': this.emit('StageStatus', session, msg.body); break
      case 'SeedDefaults': this.emit('SeedDefaults', session, msg.body); break
    }
  }

  // Sends a service message to one connected peer; false when it is not connected or too old.
  sendTo<K extends 'Stage' | 'StageStatus' | 'SeedDefaults'> (peerHex: string, type: K, body: MessageMap[K]): boolean {
    const s = this.sessions.get(peerHex)
    return !!s && !s.closed && s.sendIfSupported(type, body)
  }

  // Adverts for one peer alone: sent now if it is connected and at every connection after,
  // never announced on a topic.
  advertiseTo (peerHex: string, adverts: Advert[]): void {
    let mine = this.#targeted.get(peerHex)
    if (!mine) this.#targeted.set(peerHex, mine = new Map())
    for (const a of adverts) mine.set(a.root.toString('hex'), a)
    const s = this.sessions.get(peerHex)
    if (s?.remoteHello && !s.closed) s.sendAdverts(adverts)
  }

  withdrawFrom (peerHex: string, root: Buffer): void {
    const mine = this.#targeted.get(peerHex)
    if (!mine?.delete(root.toString('hex'))) return
    if (!mine.size) this.#targeted.delete(peerHex)
    this.sessions.get(peerHex)?.sendIfSupported('Withdraw', { roots: [root] })
  }

  readBlocks (hashes: Buffer): Promise<BlockBatch> {
    return this.#source.readBlocks(hashes)
  }

  backgroundLimiter (root?: Buffer): RateLimiter | undefined {
    return this.backgroundLimits?.(root?.toString('hex'))
  }

  locateBlocks (hashes: Buffer): BlockPlaces | undefined {
    return this.#source.locateBlocks?.(hashes)
  }

  // Adverts: images this host holds whole. Announced to every session and on their root topics;
  // a relabelled advert replaces the one it supersedes.
  advertise (adverts: Advert[]): void {
    const fresh = adverts.filter(a => {
      const old = this.#adverts.get(a.root.toString('hex'))
      return !old || supersedes(a, old)
    })
    for (const a of fresh) {
      const hex = a.root.toString('hex')
      this.#adverts.set(hex, a)
      this.#offers.remove(hex)
      if (this.#topics.size < MAX_ROOT_TOPICS && !this.#topics.has(hex)) {
        this.#topics.set(hex, this.#swarm.join(rootTopic(this.config.secret, a.root), { server: true, client: false }))
      }
    }
    if (!fresh.length) return
    for (const s of this.sessions.values()) if (s.remoteHello) s.sendAdverts(fresh)
  }

  withdraw (root: Buffer): void {
    const hex = root.toString('hex')
    if (this.#adverts.has(hex)) for (const s of this.sessions.values()) s.sendIfSupported('Withdraw', { roots: [root] })
    this.#adverts.delete(hex)
    const d = this.#topics.get(hex)
    if (d) {
      this.#topics.delete(hex)
      d.destroy().catch(() => {})
    }
  }

  // A fetch looks for holders of `root` on its topic, and is found there as a partial holder.
  lookFor (root: Buffer): () => void {
    const hex = root.toString('hex')
    if (this.#topics.has(hex)) return () => {}
    const d = this.#swarm.join(rootTopic(this.config.secret, root), { server: true, client: true })
    this.#topics.set(hex, d)
    return () => {
      if (this.#topics.get(hex) !== d || this.#adverts.has(hex)) return
      this.#topics.delete(hex)
      d.destroy().catch(() => {})
    }
  }

  // Sends part or all of a Have bitfield to every session.
  // `bitfield` starts at byte `startByte` of the whole (a slice of changed bytes).
  broadcastHave (root: Buffer, bitfield: Buffer, startByte = 0): void {
    const chunk = MAX_HAVE_BITS / 8
    for (const s of this.sessions.values()) {
      if (!s.remoteHello) continue
      // An empty bitfield still goes out once: "I am fetching this".
      for (let o = 0; o < Math.max(1, bitfield.length); o += chunk) s.sendHave({ root, start: (startByte + o) * 8, bitfield: bitfield.subarray(o, o + chunk) })
    }
  }

  holders (rootHex: string): PeerSession[] {
    return [...this.sessions.values()].filter(s => s.remoteHello && !s.closed && s.holds(rootHex))
  }

  // Every advert peers sent us, newest session first; for resolving names to roots.
  peerAdverts (): Array<{ advert: Advert, peer: PeerSession }> {
    const out: Array<{ advert: Advert, peer: PeerSession }> = []
    for (const s of this.sessions.values()) for (const a of s.adverts.values()) out.push({ advert: a, peer: s })
    return out
  }

  peers (): PeerInfo[] {
    return [...this.sessions.values()].filter(s => s.remoteHello).map(s => s.info())
  }

  address (): { host: string, port: number } | null {
    const a = this.#dht.address()
    return a ? { host: a.host, port: a.port } : null
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#rediscover)
    this.#lanes?.close()
    for (const s of this.sessions.values()) s.destroy()
    await this.#swarm.destroy()
    await this.#dht.destroy().catch(() => {})
  }
}

const widened = new WeakSet<UdxSocket>()

function widenBuffers (socket: UdxSocket | null | undefined): void {
  if (!socket || widened.has(socket)) return
  widened.add(socket)
  try {
    socket.setRecvBufferSize(RECV_BUFFER_BYTES)
  } catch {
    // A socket not bound yet or already closed keeps its defaults.
  }
}
