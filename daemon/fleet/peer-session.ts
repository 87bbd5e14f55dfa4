// One peer connection: frames over the Noise stream, the Hello handshake, request/response
// matching for manifests and blocks, and serving the peer's requests under upload limits.
// Any protocol violation ends this session (and only it); the daemon goes on.
// A session may have a lane: a second session with the same peer over kernel TCP
// (tcp-lanes.ts) that carries only block requests and answers, cheaper per byte than UDX. The
// lane shares its session's request ids, statistics and per-peer limit; when it goes, its
// requests are asked again here.

import { EventEmitter } from 'node:events'
import {
  Codec, decodeMessage, encodeFrame, FEATURES, FrameDecoder, HASH_BYTES, MAX_FRAME_BYTES, MAX_MANIFEST_CHUNK, WIRE_VERSION,
  type Advert, type BlockResponse, type CodecId, type Feature, type Have, type Hello, type Message, type MessageMap, type MessageName
} from '../../protocol/wire.js'
import { OsfarmError, PEER_GONE, PROTOCOL_ERROR } from '../../protocol/errors.js'
import { RateLimiter } from './rate-limiter.js'
import { blockPool } from '../blocks/block-pool.js'
import type { BlockTarget } from '../blocks/block-worker.js'
import { packBlocks } from './block-packer.js'
import type { BlockBatch, SessionHost, SessionStats, Stream } from './session-host.js'
import type { PeerInfo } from '../../protocol/rpc.js'

const HELLO_TIMEOUT_MS = 15_000
const REQUEST_TIMEOUT_MS = 60_000
// A peer may queue this many block requests with us; more is a protocol violation.
const MAX_QUEUED_REQUESTS = 512
const SERVE_CONCURRENCY = 4
// A manifest's first chunk, from a peer that takes ranges (see getManifest).
const MANIFEST_FIRST_CHUNK = 256 << 10
// Responses that waited for the link (or an upload limit) this long are link-bound: packing
// harder then costs nothing the link would not (block-packer.ts).
const LINK_WAIT_MS = 3
// Rate estimate: exponentially weighted over about this many milliseconds.
const RATE_WINDOW_MS = 2000

const FEATURE_OF: Partial<Record<MessageName, Feature>> = { Withdraw: 'withdraw', Stage: 'stage', StageStatus: 'stage', SeedDefaults: 'seed-defaults', Offers: 'offers' }

// What a lane carries.
const LANE_MESSAGES = new Set<MessageName>(['Hello', 'BlockRequest', 'BlockResponse', 'Cancel', 'Error'])

// Received frames' buffers that hold nothing else (see #onData).
const ownBuffers = new WeakSet<ArrayBufferLike>()

interface Pending {
  resolve: (value: any) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
  type: 'ManifestResponse' | 'BlockResponse'
}

export class PeerSession extends EventEmitter {
  readonly remoteKey: Buffer
  readonly remoteHex: string
  readonly address: string
  // The adverts our Hello carried: those made before the peer's Hello arrives are sent then.
  helloAdverts: Advert[]
  remoteHello: Hello | undefined
  readonly adverts = new Map<string, Advert>()
  // Partial holders: root hex → bitfield of verified blocks.
  readonly haves = new Map<string, Buffer>()
  readonly stats: SessionStats
  // A lane's own bytes on the wire (its stats are its session's).
  readonly laneBytes = { in: 0, out: 0 }
  readonly ready: Promise<void>
  closed = false
  closeError: Error | undefined

  // Set on a lane: the session it carries blocks for.
  readonly parent: PeerSession | undefined
  #lane: PeerSession | undefined
  readonly #ids: { next: number }
  readonly #stream: Stream
  readonly #alloc: (n: number) => Buffer
  readonly #host: SessionHost
  readonly #decoder = new FrameDecoder(MAX_FRAME_BYTES)
  readonly #pending = new Map<number, Pending>()
  readonly #limiter: RateLimiter
  #queue: Array<{ id: number, hashes: Buffer }> = []
  // Background (seeding) requests wait until no foreground request is queued.
  #background: Array<{ id: number, hashes: Buffer, root?: Buffer | null }> = []
  #serving = 0
  #drained: Promise<void> | undefined
  // The last response waited for the link (or an upload limit): see LINK_WAIT_MS.
  #linkBound = false
  #rateAt = performance.now()
  #readyResolve!: () => void
  #readyReject!: (err: Error) => void
  #helloTimer: NodeJS.Timeout

  constructor (stream: Stream, remoteKey: Buffer, host: SessionHost, address = '', parent?: PeerSession) {
    super()
    this.#stream = stream
    this.#alloc = stream.alloc ? n => stream.alloc!(n) : Buffer.allocUnsafe
    this.#host = host
    this.remoteKey = remoteKey
    this.remoteHex = remoteKey.toString('hex')
    this.address = address
    this.parent = parent
    this.stats = parent?.stats ?? { bytesIn: 0, bytesOut: 0, rawIn: 0, rawOut: 0, blocksIn: 0, blocksOut: 0, rateIn: 0, connectedAt: Date.now() }
    this.#ids = parent ? parent.#ids : { next: 1 }
    this.#limiter = parent ? parent.#limiter : new RateLimiter(host.peerUploadLimit)
    this.ready = new Promise((resolve, reject) => { this.#readyResolve = resolve; this.#readyReject = reject })
    this.ready.catch(() => {})
    this.#helloTimer = setTimeout(() => this.destroy(PROTOCOL_ERROR('no hello from peer')), HELLO_TIMEOUT_MS)
    stream.on('data', (chunk: Buffer) => this.#onData(chunk))
    stream.on('error', (err: Error) => this.destroy(err))
    stream.on('close', () => this.destroy())
    this.helloAdverts = parent ? [] : host.helloAdverts()
    const lanePort = parent ? undefined : host.lanePort
    this.#send('Hello', { version: WIRE_VERSION, host: host.hostName, codecs: host.codecs, maxFrame: MAX_FRAME_BYTES, adverts: this.helloAdverts, features: [...FEATURES], ...(lanePort ? { lanePort } : {}) })
  }

  get lane (): PeerSession | undefined { return this.#lane }

  // Block traffic goes over `lane` once its Hello is in; a lane already there is closed.
  attachLane (lane: PeerSession): void {
    if (this.closed) { lane.destroy(); return }
    this.#lane?.destroy()
    this.#lane = lane
    lane.once('close', () => { if (this.#lane === lane) this.#lane = undefined })
  }

  get codec (): CodecId {
    const theirs = this.remoteHello?.codecs ?? []
    return theirs.includes(Codec.ZSTD) && this.#host.codecs.includes(Codec.ZSTD) ? Codec.ZSTD : Codec.RAW
  }

  get inflight (): number { return this.#pending.size + (this.#lane ? this.#lane.#pending.size : 0) }

  // True when the peer holds block `index` of manifest `rootHex`, whole or part-way.
  has (rootHex: string, index: number): boolean {
    if (this.adverts.has(rootHex)) return true
    const bits = this.haves.get(rootHex)
    return !!bits && index >> 3 < bits.length && (bits[index >> 3]! & (1 << (index & 7))) !== 0
  }

  holds (rootHex: string): boolean {
    return this.adverts.has(rootHex) || this.haves.has(rootHex)
  }

  supports (feature: Feature): boolean {
    return !!this.remoteHello?.features?.includes(feature)
  }

  // Sends a message of an appended type, if the peer named its feature; false when not sent.
  sendIfSupported<K extends 'Withdraw' | 'Stage' | 'StageStatus' | 'SeedDefaults' | 'Offers'> (type: K, body: MessageMap[K]): boolean {
    if (!this.remoteHello || !this.supports(FEATURE_OF[type]!)) return false
    return this.#send(type, body) || !this.closed
  }

  // What `peer ls` shows of it (once it said Hello).
  info (): PeerInfo {
    return {
      key: this.remoteHex,
      host: this.remoteHello?.host ?? '',
      address: this.address,
      images: this.adverts.size,
      partial: this.haves.size,
      bytesIn: this.stats.bytesIn,
      bytesOut: this.stats.bytesOut,
      rateIn: Math.round(this.stats.rateIn),
      connectedAt: new Date(this.stats.connectedAt).toISOString(),
      lane: this.lane?.remoteHello ? { address: this.lane.address, bytesIn: this.lane.laneBytes.in, bytesOut: this.lane.laneBytes.out } : null
    }
  }

  sendAdverts (adverts: Advert[]): void {
    for (let i = 0; i < adverts.length; i += 500) this.#send('Adverts', { adverts: adverts.slice(i, i + 500) })
  }

  // Adverts heard of and passed on, to a peer that reads them.
  sendOffers (adverts: Advert[]): void {
    for (let i = 0; i < adverts.length; i += 500) this.sendIfSupported('Offers', { adverts: adverts.slice(i, i + 500) })
  }

  sendHave (have: Have): void {
    this.#send('Have', have)
  }

  // The whole manifest encoding, in chunks: the first (from this peer) tells the size; the rest
  // are asked for at once, spread over this peer and `helpers` (other holders), each asked here
  // again if its helper fails. Where the holders take ranges, the first chunk is small and the
  // rest is cut into one part per holder. The caller verifies it against the root.
  async getManifest (root: Buffer, maxBytes: number, helpers: PeerSession[] = []): Promise<Buffer> {
    const ranged = this.supports('manifest-range')
    const first = await this.#manifestChunk(root, 0, ranged ? MANIFEST_FIRST_CHUNK : MAX_MANIFEST_CHUNK, maxBytes)
    const from: PeerSession[] = [this, ...helpers.filter(h => h !== this && (!ranged || h.supports('manifest-range')))]
    const rest = first.total - first.data.length
    const size = ranged ? Math.ceil(rest / Math.max(from.length, Math.ceil(rest / MAX_MANIFEST_CHUNK))) : MAX_MANIFEST_CHUNK
    const offsets: number[] = []
    for (let o = first.data.length; o < first.total; o += size) offsets.push(o)
    const parts = await Promise.all(offsets.map((o, k) => {
      const ask = (p: PeerSession) => p.#manifestChunk(root, o, size, maxBytes, first.total)
      const p = from[(k + 1) % from.length]!
      return p === this ? ask(this) : ask(p).catch(() => ask(this))
    }))
    return Buffer.concat([first.data, ...parts.map(r => r.data)])
  }

  // `length` bytes of a manifest's encoding from `offset` (fewer at the end); a length other
  // than MAX_MANIFEST_CHUNK only of a peer that takes ranges.
  async #manifestChunk (root: Buffer, offset: number, length: number, maxBytes: number, total?: number): Promise<{ data: Buffer, total: number }> {
    const r = await this.#request('ManifestRequest', 'ManifestResponse', id => length === MAX_MANIFEST_CHUNK ? { id, root, offset } : { id, root, offset, length })
    const want = Math.min(length, r.total - offset)
    if (r.offset !== offset || r.total > maxBytes || (total !== undefined && r.total !== total) || want <= 0 || r.data.length !== want) throw PROTOCOL_ERROR('bad manifest chunk')
    return { data: r.data, total: r.total }
  }

  // A manifest as a delta against `base`, which the caller holds, where the peer can make one;
  // else the whole encoding. The caller applies and verifies it.
  async getManifestDelta (root: Buffer, base: Buffer, maxBytes: number): Promise<{ data: Buffer, delta: boolean }> {
    if (!this.supports('manifest-delta')) return { data: await this.getManifest(root, maxBytes), delta: false }
    const parts: Buffer[] = []
    let offset = 0
    let total = Infinity
    let delta: boolean | undefined
    while (offset < total) {
      const r = await this.#request('ManifestRequest', 'ManifestResponse', id => ({ id, root, offset, base }))
      if (r.offset !== offset || r.total > maxBytes || (r.data.length === 0 && offset < r.total)) throw PROTOCOL_ERROR('bad manifest chunk')
      // The peer's answer changed kind part-way (it dropped the base): the caller asks again.
      if (delta !== undefined && delta !== !!r.delta) throw PEER_GONE('manifest delta changed between chunks')
      delta = !!r.delta
      total = r.total
      parts.push(r.data)
      offset += r.data.length
    }
    return { data: Buffer.concat(parts), delta: !!delta }
  }

  // Blocks by hash; resolves with their raw bytes (not yet verified: the caller checks hashes).
  // `background`: the root of the image a seeding fetch wants; such requests are served after
  // foreground ones, under the upload limit of the server's seed policy for that image.
  // `into`: valid blocks are written to that file there and then, and `data` comes back empty.
  async getBlocks (hashes: Buffer, onId?: (id: number) => void, background?: Buffer, into?: BlockTarget): Promise<BlockBatch> {
    const lane = this.#lane
    if (lane?.remoteHello && !lane.closed) {
      try {
        return await lane.getBlocks(hashes, onId, background, into)
      } catch (err) {
        // The lane went: ask again here. A failure to write the blocks, or of the session, stands.
        if (!lane.closed || this.closed || (err as OsfarmError).code === 'IO_ERROR') throw err
      }
    }
    const count = hashes.length / HASH_BYTES
    const r: BlockResponse = await this.#request('BlockRequest', 'BlockResponse', id => { onId?.(id); return background ? { id, hashes, background: true, root: background } : { id, hashes } })
    if (r.sizes.length !== count) throw PROTOCOL_ERROR('block response does not match its request')
    let raw = 0
    for (const s of r.sizes) raw += s
    if (r.codec !== Codec.ZSTD && r.codec !== Codec.RAW) throw PROTOCOL_ERROR(`codec ${r.codec} was not negotiated`)
    const wireBytes = r.data.length + 16 + r.sizes.length * 3
    let got: { data: Buffer, valid: Uint8Array }
    try {
      got = await blockPool().unpack(r.codec === Codec.ZSTD, r.data, raw, r.sizes, hashes, ownBuffers.has(r.data.buffer), into)
    } catch (err) {
      // A failed write here is ours; anything else, the payload's.
      if ((err as OsfarmError).code === 'IO_ERROR') throw err
      throw PROTOCOL_ERROR((err as Error).message)
    }
    this.stats.rawIn += raw
    this.stats.blocksIn += count
    return { sizes: r.sizes, data: got.data, valid: got.valid, wireBytes }
  }

  cancel (id: number): void {
    const p = this.#pending.get(id)
    if (!p) { this.#lane?.cancel(id); return }
    this.#pending.delete(id)
    clearTimeout(p.timer)
    p.reject(new OsfarmError('JOB_CANCELLED', 'request cancelled'))
    this.#send('Cancel', { id })
  }

  destroy (err?: Error): void {
    if (this.closed) return
    this.closed = true
    this.closeError = err
    clearTimeout(this.#helloTimer)
    if (err instanceof OsfarmError && !this.#stream.destroyed) {
      // Best effort: tell the peer why before the stream goes.
      try { this.#stream.write(encodeFrame('Error', { id: 0, code: err.code, message: err.text.slice(0, 200) })) } catch {}
    }
    this.#stream.destroy()
    this.#lane?.destroy()
    // A peer that breaks the protocol on its lane has broken it with us.
    if (this.parent && err instanceof OsfarmError && err.code === 'PROTOCOL_ERROR') this.parent.destroy(err)
    const gone = err ?? PEER_GONE(`peer ${this.remoteHex.slice(0, 8)} closed the connection`)
    this.#readyReject(gone)
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer)
      p.reject(gone)
    }
    this.#pending.clear()
    this.#queue = []
    this.#background = []
    this.emit('close', err)
  }

  // False when the stream is backed up; #drained then settles once it has drained. The secret
  // stream's own buffer is used only while nothing waits in it: a frame written behind others
  // would find that buffer taken by a later one, and be copied after all.
  #send<K extends MessageName> (type: K, body: MessageMap[K]): boolean {
    if (this.closed) return false
    const frame = encodeFrame(type, body, this.#drained ? Buffer.allocUnsafe : this.#alloc)
    this.stats.bytesOut += frame.length
    if (this.parent) this.laneBytes.out += frame.length
    if (this.#stream.write(frame)) return true
    // Each listener goes when the other fires: a session backs up many times in its life.
    this.#drained ??= new Promise<void>(resolve => {
      const done = () => {
        this.#stream.off('drain', done)
        this.off('close', done)
        this.#drained = undefined
        resolve()
      }
      this.#stream.once('drain', done)
      this.once('close', done)
    })
    return false
  }

  #request<Q extends MessageName, R extends 'ManifestResponse' | 'BlockResponse'> (type: Q, reply: R, make: (id: number) => MessageMap[Q]): Promise<MessageMap[R]> {
    if (this.closed) return Promise.reject(this.closeError ?? PEER_GONE())
    const id = this.#ids.next++
    if (this.#ids.next > 0xffffffff) this.#ids.next = 1
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(PEER_GONE(`peer ${this.remoteHex.slice(0, 8)} did not answer in ${REQUEST_TIMEOUT_MS / 1000} s`))
      }, REQUEST_TIMEOUT_MS)
      this.#pending.set(id, { resolve, reject, timer, type: reply })
      this.#send(type, make(id))
    })
  }

  #onData (chunk: Buffer): void {
    if (this.closed) return
    this.stats.bytesIn += chunk.length
    if (this.parent) this.laneBytes.in += chunk.length
    this.#measure(chunk.length)
    // A chunk that is one whole frame in a buffer of its own (a secret-stream message that
    // spanned packets is reassembled in one): its block payload can move to a worker uncopied.
    if (this.#decoder.buffered === 0 && chunk.length >= 4096 && chunk.length === 4 + chunk.readUInt32BE(0) && chunk.buffer.byteLength - chunk.byteLength <= 64) ownBuffers.add(chunk.buffer)
    try {
      for (const frame of this.#decoder.push(chunk)) {
        if (this.closed) return
        this.#dispatch(decodeMessage(frame))
      }
    } catch (err) {
      this.destroy(err as Error)
    }
  }

  #measure (n: number): void {
    const now = performance.now()
    const dt = Math.max(1, now - this.#rateAt)
    this.#rateAt = now
    const w = Math.min(1, dt / RATE_WINDOW_MS)
    this.stats.rateIn = this.stats.rateIn * (1 - w) + (n * 1000 / dt) * w
  }

  #dispatch (msg: Message): void {
    if (!this.remoteHello && msg.type !== 'Hello') throw PROTOCOL_ERROR(`${msg.type} before Hello`)
    if (this.parent && !LANE_MESSAGES.has(msg.type)) throw PROTOCOL_ERROR(`${msg.type} on a lane`)
    switch (msg.type) {
      case 'Hello':
        if (this.remoteHello) throw PROTOCOL_ERROR('second Hello')
        if (msg.body.version !== WIRE_VERSION) throw PROTOCOL_ERROR(`peer speaks wire version ${msg.body.version}, we speak ${WIRE_VERSION}`)
        clearTimeout(this.#helloTimer)
        this.remoteHello = msg.body
        if (this.parent) {
          if (msg.body.adverts.length) throw PROTOCOL_ERROR('adverts on a lane')
        } else {
          this.#host.onAdverts(this, msg.body.adverts)
          this.#host.onHello(this)
        }
        this.#readyResolve()
        return
      case 'Adverts':
        this.#host.onAdverts(this, msg.body.adverts)
        return
      case 'Have':
        this.#host.onHave(this, msg.body)
        return
      case 'Offers':
        this.#host.onOffers?.(this, msg.body.adverts)
        return
      case 'ManifestRequest':
        this.#serveManifest(msg.body.id, msg.body.root, msg.body.offset ?? 0, msg.body.length || MAX_MANIFEST_CHUNK, msg.body.base ?? undefined)
        return
      case 'BlockRequest':
        if (this.#queue.length + this.#background.length >= MAX_QUEUED_REQUESTS) throw PROTOCOL_ERROR('too many queued requests')
        if (msg.body.background) this.#background.push(msg.body)
        else this.#queue.push(msg.body)
        this.#pump()
        return
      case 'Cancel': {
        for (const q of [this.#queue, this.#background]) {
          const i = q.findIndex(r => r.id === msg.body.id)
          if (i >= 0) q.splice(i, 1)
        }
        return
      }
      case 'Withdraw':
        this.#host.onWithdraw?.(this, msg.body.roots)
        return
      case 'Stage':
      case 'StageStatus':
      case 'SeedDefaults':
        this.#host.onService?.(this, msg)
        return
      case 'ManifestResponse':
      case 'BlockResponse': {
        const p = this.#pending.get(msg.body.id)
        // A response to a cancelled or timed-out request is dropped; to an unknown id, too.
        if (!p) return
        if (p.type !== msg.type) throw PROTOCOL_ERROR(`${msg.type} answers a ${p.type} request`)
        this.#pending.delete(msg.body.id)
        clearTimeout(p.timer)
        p.resolve(msg.body)
        return
      }
      case 'Error': {
        const { id, code, message } = msg.body
        if (!id) {
          this.destroy(PEER_GONE(`peer ended the session: ${code}${message ? ` ${message}` : ''}`))
          return
        }
        const p = this.#pending.get(id)
        if (!p) return
        this.#pending.delete(id)
        clearTimeout(p.timer)
        p.reject(new OsfarmError('PEER_GONE', `peer error ${code}${message ? `: ${message}` : ''}`, { peerCode: code }))
      }
    }
  }

  #serveManifest (id: number, root: Buffer, offset: number, length: number, base?: Buffer): void {
    // Runs (version 2) only for a peer that reads them.
    const delta = base && this.#host.readManifestDelta ? this.#host.readManifestDelta(root, base, this.supports('manifest-delta-runs') ? 2 : 1) : Promise.resolve(undefined)
    delta.catch(() => undefined).then(async d => ({ enc: d ?? await this.#host.readManifest(root), delta: !!d })).then(({ enc, delta }) => {
      if (!enc) {
        this.#send('Error', { id, code: 'NOT_FOUND', message: 'no such manifest' })
        return
      }
      const data = enc.subarray(offset, offset + Math.min(length, MAX_MANIFEST_CHUNK))
      this.stats.rawOut += data.length
      this.#send('ManifestResponse', delta ? { id, total: enc.length, offset, data, delta } : { id, total: enc.length, offset, data })
    }, err => {
      this.#send('Error', { id, code: OsfarmError.from(err).code, message: 'manifest unavailable' })
    })
  }

  #pump (): void {
    while (this.#serving < SERVE_CONCURRENCY && (this.#queue.length || this.#background.length) && !this.closed) {
      const background = !this.#queue.length
      const req: { id: number, hashes: Buffer, root?: Buffer | null } = (background ? this.#background : this.#queue).shift()!
      this.#serving++
      this.#serve(req.id, req.hashes, background ? req.root ?? null : undefined).catch(err => {
        this.#send('Error', { id: req.id, code: OsfarmError.from(err).code, message: 'blocks unavailable' })
      }).finally(() => {
        this.#serving--
        this.#pump()
      })
    }
  }

  // `background`: a seeding request (null when it did not name its image), served under the
  // upload limit of the seed policy that wants that image.
  async #serve (id: number, hashes: Buffer, background?: Buffer | null): Promise<void> {
    const { sizes, raw, data, codec } = await packBlocks(this.#host, hashes, this.codec === Codec.ZSTD, this.#linkBound)
    if (this.closed) return
    const wire = data.length + 16 + sizes.length * 3
    const waitFrom = performance.now()
    await Promise.all([this.#limiter.take(wire), this.#host.uploadLimiter.take(wire), background !== undefined ? this.#host.backgroundLimiter?.(background ?? undefined)?.take(wire) : undefined])
    // One response at a time into a backed-up stream: the others wait for the next drain.
    while (this.#drained) await this.#drained
    this.#linkBound = performance.now() - waitFrom >= LINK_WAIT_MS
    if (this.closed) return
    this.stats.rawOut += raw
    this.stats.blocksOut += sizes.length
    this.#send('BlockResponse', { id, codec, sizes, data })
  }
}
