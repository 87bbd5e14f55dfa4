// A roll-out in virtual time: one source holds an image, every other host has a seed policy
// that wants it, and the fleet swarms it. The hosts run the daemon's own decision code: the
// fetch scheduler (daemon/fetch/scheduler.ts) as RemoteFetch drives it, the Have broadcaster
// (daemon/fetch/have-broadcaster.ts) and the seed-policy choice (daemon/seed/seed-policy.ts);
// the sessions' serving rules (a FIFO of background requests per session, SERVE_CONCURRENCY at
// once) are copied from daemon/fleet/peer-session.ts. The network is network.ts, the
// connections swarm-graph.ts. How this maps to the code, and what it leaves out:
// docs/fleet-sim.md.

import { Scheduler, type PeerState, type Req } from '../../daemon/fetch/scheduler.js'
import { HaveBroadcaster, type HaveTimers } from '../../daemon/fetch/have-broadcaster.js'
import { chooseWanted, newPolicy, type Offer } from '../../daemon/seed/seed-policy.js'
import { MAX_HAVE_BITS } from '../../protocol/wire.js'
import { EventLoop } from './event-loop.js'
import { Network } from './network.js'
import { SwarmGraph, type Mesh } from './swarm-graph.js'

const BLOCK = 4096
// Blocks per request, as the fetcher sizes them (1 MiB).
const BATCH = 256
// As in peer-session.ts.
const SERVE_CONCURRENCY = 4
// As in remote-fetch.ts.
const IDLE_PUMP_MS = 1000
const FLEET_TOPIC = 'fleet'

export interface SimOptions {
  hosts: number
  // Bytes per second, each way, every host.
  rate: number
  // One-way latency, ms.
  latencyMs: number
  // Share of receivers that leave part-way (0..1).
  churn: number
  imageBytes: number
  dataBytes: number
  // Wire bytes per raw byte (zstd): 1 sends raw.
  wireRatio: number
  mesh: Mesh
  maxPeers: number
  lookupPeers: number
  // Adverts heard from a peer are passed on to the others (else only holders advertise).
  relayAdverts: boolean
  seed: number
  // Virtual time limit, ms.
  limitMs: number
}

export const DEFAULTS: SimOptions = {
  hosts: 100,
  rate: 125e6,
  latencyMs: 0.5,
  churn: 0,
  imageBytes: 2 * 1024 ** 3,
  dataBytes: 255e6,
  wireRatio: 1,
  mesh: 'topic',
  maxPeers: 64,
  lookupPeers: 20,
  relayAdverts: true,
  seed: 1,
  limitMs: 30 * 60_000
}

export interface SimResult {
  hosts: number
  receivers: number
  finished: number
  left: number
  // Seconds from the source's advert to each receiver holding the image (those that stayed).
  p50: number
  p99: number
  max: number
  sourceCopies: number
  // Seconds until the source sent its last block.
  sourceBusy: number
  maxConnections: number
  // Messages a host sent (requests, answers, Haves, adverts), the most and the mean.
  maxMessages: number
  meanMessages: number
  // Raw bytes received as duplicates (another copy was already in), over the data delivered.
  duplicateShare: number
  events: number
  timedOut: boolean
}

interface Serve { req: Req }

interface Fetch {
  sched: Scheduler
  haves: HaveBroadcaster
  peers: Map<number, PeerState>
  started: number
  idle: boolean
}

interface Host {
  id: number
  hex: string
  gone: boolean
  whole: boolean
  bits: Buffer
  // What its peers know it holds (its Haves, as they arrive).
  announced: Buffer
  heardOf: boolean
  fetch: Fetch | undefined
  doneAt: number
  // Per peer: background requests queued here, and how many are being served.
  queues: Map<number, Serve[]>
  serving: Map<number, number>
  messages: number
}

export function simulate (options: Partial<SimOptions> = {}): SimResult {
  const o: SimOptions = { ...DEFAULTS, ...options }
  if (!Number.isInteger(o.hosts) || o.hosts < 2) throw new Error('--hosts must be at least 2 (a source and a receiver)')
  let state = (o.seed >>> 0) || 1
  const random = () => {
    state ^= state << 13; state >>>= 0
    state ^= state >>> 17
    state ^= state << 5; state >>>= 0
    return state / 2 ** 32
  }
  const loop = new EventLoop()
  const net = new Network(loop, Array.from({ length: o.hosts }, () => ({ up: o.rate, down: o.rate })))
  // A fleet whose hosts all fit in one host's sessions is a full mesh (fleet-swarm.ts looks
  // again until every allowed host is connected); a larger one is what the topics give.
  const mesh = o.hosts - 1 <= o.maxPeers ? 'full' : o.mesh
  const graph = new SwarmGraph({ hosts: o.hosts, mesh, maxPeers: o.maxPeers, lookupPeers: o.lookupPeers, random })
  const blocks = Math.ceil(o.imageBytes / BLOCK)
  const entries = dataLayout(blocks, Math.round(o.dataBytes / BLOCK), random)
  // Keys and the root from the seeded generator: a run is repeatable.
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(random() * 256)))
  const root = bytes(32)
  const rootHex = root.toString('hex')
  const bitBytes = Math.ceil(blocks / 8)
  const timers: HaveTimers = { set: (fn, ms) => loop.at(ms, fn), clear: h => loop.cancel(h) }
  const policy = newPolicy({ match: 'app' }, 'host')
  const offer: Offer = { root: rootHex, name: 'app', size: o.imageBytes, labels: [], created: 0 }
  let duplicate = 0
  let delivered = 0
  // Receivers that hold the image or left.
  let settled = 0
  // When the source last finished sending blocks.
  let sourceDone = 0

  const hosts: Host[] = Array.from({ length: o.hosts }, (_, id) => ({
    id,
    hex: bytes(32).toString('hex'),
    gone: false,
    whole: false,
    bits: Buffer.alloc(bitBytes),
    announced: Buffer.alloc(bitBytes),
    heardOf: false,
    fetch: undefined,
    doneAt: NaN,
    queues: new Map(),
    serving: new Map(),
    messages: 0
  }))
  const byHex = new Map(hosts.map(h => [h.hex, h]))
  // Requests the fetcher cancelled (their blocks came from elsewhere): not served if not yet.
  const cancelled = new WeakSet<Req>()
  const source = hosts[0]!
  source.whole = true
  source.heardOf = true

  // The fleet topic: every host joined it long before the roll-out, in a random order.
  for (const h of shuffled(o.hosts, random)) graph.join(h, FLEET_TOPIC)

  // A small message from a to b, handled after the latency.
  const message = (a: Host, b: Host, fn: () => void) => {
    a.messages++
    loop.at(o.latencyMs, () => { if (!a.gone && !b.gone && graph.connected(a.id, b.id)) fn() })
  }

  // The advert rule: a holder advertises to every session; with relaying, a host that first
  // hears of the image passes the advert on.
  const advertise = (h: Host) => {
    for (const p of graph.peers(h.id)) message(h, hosts[p]!, () => onAdvert(hosts[p]!, h))
  }
  const onAdvert = (h: Host, from: Host) => {
    if (from.whole) {
      const ps = h.fetch?.peers.get(from.id)
      if (h.fetch && ps) { h.fetch.sched.setHolding(ps, true, undefined); h.fetch.sched.wholeHolderAppeared() } else if (h.fetch) { addPeer(h, from); h.fetch.sched.wholeHolderAppeared() }
      pump(h)
    }
    if (h.heardOf) return
    h.heardOf = true
    if (o.relayAdverts) for (const p of graph.peers(h.id)) if (p !== from.id) message(h, hosts[p]!, () => onAdvert(hosts[p]!, h))
    // The seed policy's choice, as seed-service.ts makes it on every advert.
    if (!h.whole && !h.fetch && chooseWanted([policy], [offer]).has(rootHex)) startFetch(h)
  }

  const startFetch = (h: Host) => {
    const sched = new Scheduler({ entries, size: o.imageBytes, blockSize: BLOCK, batch: BATCH, root, background: true, self: h.hex, now: () => loop.now })
    const haves = new HaveBroadcaster({ broadcastHave: (_root, bits, startByte) => broadcastHave(h, bits, startByte ?? 0) }, root, h.bits, timers)
    h.fetch = { sched, haves, peers: new Map(), started: loop.now, idle: false }
    // As FetchJob does for a background fetch: "I am fetching this", then all it holds.
    broadcastHave(h, Buffer.alloc(0), 0)
    haves.all()
    // The root topic: found there by other fetchers, and finds holders.
    for (const p of graph.join(h.id, rootHex)) connected(h, hosts[p]!)
    for (const p of graph.peers(h.id)) {
      const q = hosts[p]!
      if (q.whole || q.fetch) addPeer(h, q)
    }
    pump(h)
  }

  // A new connection: each side tells the other what it holds of the image.
  const connected = (a: Host, b: Host) => {
    for (const [x, y] of [[a, b], [b, a]] as const) {
      if (x.whole) message(x, y, () => onAdvert(y, x))
      else if (x.fetch) message(x, y, () => onHave(y, x, 0, 0))
    }
  }

  const addPeer = (h: Host, q: Host) => {
    const f = h.fetch!
    if (f.peers.has(q.id) || f.sched.isBanned(q.hex)) return
    f.peers.set(q.id, f.sched.addPeer(q.hex, { whole: q.whole, bits: q.whole ? undefined : q.announced }))
  }

  const broadcastHave = (h: Host, bits: Buffer, startByte: number) => {
    const chunks = Math.max(1, Math.ceil(bits.length / (MAX_HAVE_BITS / 8)))
    const copy = Buffer.from(bits)
    for (const p of graph.peers(h.id)) {
      h.messages += chunks - 1
      message(h, hosts[p]!, () => {
        copy.copy(h.announced, startByte)
        onHave(hosts[p]!, h, startByte * 8, copy.length * 8)
      })
    }
  }

  const onHave = (h: Host, from: Host, start: number, count: number) => {
    if (!h.fetch) return
    // The other end is fetching it too: someone else for the seed policy to hear of it from.
    // As RemoteFetch does: heard, added if new, every peer pumped.
    const ps = h.fetch.peers.get(from.id)
    if (ps) h.fetch.sched.heard(ps, start, count)
    else addPeer(h, from)
    pump(h)
  }

  const pump = (h: Host) => {
    const f = h.fetch
    if (!f || h.gone) return
    for (const ps of f.sched.byRate()) {
      const q = byHex.get(ps.hex)!
      for (const req of f.sched.assign(ps)) request(h, q, req)
    }
    // As RemoteFetch does: with nothing in flight, ask again in a while.
    if (!f.sched.busy && !f.sched.finished && !f.idle) {
      f.idle = true
      loop.at(IDLE_PUMP_MS, () => { f.idle = false; pump(h) })
    }
  }

  const request = (h: Host, q: Host, req: Req) => {
    message(h, q, () => {
      const list = q.queues.get(h.id) ?? []
      q.queues.set(h.id, list)
      list.push({ req })
      serveNext(q, h)
    })
  }

  const serveNext = (q: Host, h: Host) => {
    const list = q.queues.get(h.id)
    let n = q.serving.get(h.id) ?? 0
    while (list?.length && n < SERVE_CONCURRENCY) {
      const { req } = list.shift()!
      if (cancelled.has(req)) continue
      n++
      const sizes: number[] = req.us.map(u => q.whole || has(q.bits, entries[u]!.indices[0]!) ? BLOCK : 0)
      const raw = sizes.reduce((a, b) => a + b, 0)
      q.messages++
      net.send(q.id, h.id, Math.max(1, raw * o.wireRatio), () => {
        if (q === source && raw) sourceDone = loop.now
        q.serving.set(h.id, (q.serving.get(h.id) ?? 1) - 1)
        serveNext(q, h)
        loop.at(o.latencyMs, () => { if (!h.gone) answered(h, req, sizes) })
      })
    }
    q.serving.set(h.id, n)
  }

  const answered = (h: Host, req: Req, sizes: number[]) => {
    const f = h.fetch
    if (!f) { for (const s of sizes) duplicate += s; return }
    const out = f.sched.answer(req, sizes, () => true, () => BLOCK)
    if (!out) { for (const s of sizes) duplicate += s; return }
    duplicate += out.raw - out.got.length * BLOCK
    delivered += out.got.length * BLOCK
    const written: number[] = []
    for (const u of out.got) for (const i of entries[u]!.indices) { h.bits[i >> 3]! |= 1 << (i & 7); written.push(i) }
    if (written.length) f.haves.written(written)
    if (f.sched.pending === 0) for (const r of f.sched.takeDone()) message(h, byHex.get(r.peer.hex)!, () => cancelled.add(r))
    if (f.sched.finished) { finish(h); return }
    pump(h)
  }

  const finish = (h: Host) => {
    h.fetch!.haves.stop()
    h.fetch = undefined
    h.whole = true
    h.doneAt = loop.now
    settled++
    // Registered: it advertises the image to every session.
    advertise(h)
  }

  const leave = (h: Host) => {
    if (h.gone || h.whole) return
    h.gone = true
    settled++
    h.fetch?.haves.stop()
    h.fetch = undefined
    net.drop(h.id)
    for (const p of graph.leave(h.id)) {
      const q = hosts[p]!
      q.queues.delete(h.id)
      q.serving.delete(h.id)
      const ps = q.fetch?.peers.get(h.id)
      if (q.fetch && ps) {
        q.fetch.peers.delete(h.id)
        q.fetch.sched.removePeer(ps)
        pump(q)
      }
    }
  }

  const receivers = hosts.slice(1)
  // Churn: that share of the receivers leaves at a random moment within what one lone
  // transfer would take.
  const lone = o.dataBytes * o.wireRatio / o.rate * 1000
  const leaving = new Set(shuffled(receivers.length, random).slice(0, Math.round(o.churn * receivers.length)).map(i => receivers[i]!))
  for (const h of leaving) loop.at(random() * lone, () => leave(h))

  advertise(source)
  const completed = loop.run(() => settled === receivers.length, o.limitMs)

  const times = receivers.filter(h => h.whole).map(h => h.doneAt / 1000).sort((a, b) => a - b)
  const q = (p: number) => times.length ? times[Math.min(times.length - 1, Math.ceil(p * times.length) - 1)]! : NaN
  const messages = hosts.map(h => h.messages)
  return {
    hosts: o.hosts,
    receivers: receivers.length,
    finished: times.length,
    left: receivers.filter(h => h.gone).length,
    p50: q(0.5),
    p99: q(0.99),
    max: times.length ? times[times.length - 1]! : NaN,
    sourceCopies: net.sent[0]! / (o.dataBytes * o.wireRatio),
    sourceBusy: sourceDone / 1000,
    maxConnections: graph.maxConnections,
    maxMessages: Math.max(...messages),
    meanMessages: messages.reduce((a, b) => a + b, 0) / messages.length,
    duplicateShare: delivered ? duplicate / delivered : 0,
    events: loop.ran,
    timedOut: !completed
  }
}

function has (bits: Buffer, i: number): boolean {
  return (bits[i >> 3]! & (1 << (i & 7))) !== 0
}

function shuffled (n: number, random: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[a[i], a[j]] = [a[j]!, a[i]!]
  }
  return a
}

// Where an image's data blocks lie: extents of 1..256 blocks spread over the image, like a
// filesystem's. One plan entry per block (every hash distinct), in index order.
function dataLayout (blocks: number, data: number, random: () => number): Array<{ indices: number[] }> {
  const used = new Uint8Array(blocks)
  let placed = 0
  for (let tries = 0; placed < data && tries < 1e6; tries++) {
    const len = Math.min(data - placed, 1 + Math.floor(random() * 256))
    const at = Math.floor(random() * (blocks - len))
    for (let i = at; i < at + len; i++) if (!used[i]) { used[i] = 1; placed++ }
  }
  const entries: Array<{ indices: number[] }> = []
  for (let i = 0; i < blocks; i++) if (used[i]) entries.push({ indices: [i] })
  return entries
}
