import t from 'tap'
import crypto from 'node:crypto'
import { EventEmitter } from 'node:events'
import {
  advertExtSigningBytes, advertRevSigningBytes, advertSigningBytes, Codec, decodeMessage, encodeFrame, FrameDecoder, MAX_FRAME_BYTES,
  supersedes, TYPES, WIRE_VERSION, type Advert
} from '../protocol/wire.js'
import { PeerSession } from '../daemon/fleet/peer-session.js'
import type { SessionHost, Stream } from '../daemon/fleet/session-host.js'
import { RateLimiter } from '../daemon/fleet/rate-limiter.js'
import { hash } from '../daemon/blocks/hash.js'
import { createManifest } from '../daemon/blocks/manifest.js'
import { applyManifestDelta, encodeManifestDelta } from '../daemon/blocks/manifest-delta.js'
import { sign, verify } from '../daemon/fleet/identity.js'
import DHT from 'hyperdht'
import { signedAdvert } from '../testing/adverts.js'
import { eventually } from '../testing/eventually.js'
import type { OsfarmError } from '../protocol/errors.js'

// An in-memory stream pair: what one side writes, the other reads.
class Pipe extends EventEmitter implements Stream {
  peer: Pipe | undefined
  destroyed = false
  written: Buffer[] = []
  // Backed up: every write says so, and 'drain' follows once the event loop turns.
  backedUp = false
  write (data: Buffer): boolean {
    if (this.destroyed) return false
    this.written.push(data)
    const peer = this.peer
    if (peer) queueMicrotask(() => { if (!peer.destroyed) peer.emit('data', data) })
    if (this.backedUp) setImmediate(() => this.emit('drain'))
    return !this.backedUp
  }

  destroy (): void {
    if (this.destroyed) return
    this.destroyed = true
    queueMicrotask(() => this.emit('close'))
    this.peer?.destroy()
  }
}

function pair (): [Pipe, Pipe] {
  const a = new Pipe()
  const b = new Pipe()
  a.peer = b
  b.peer = a
  return [a, b]
}

// Host a's session (sa) and host b's (sb) over a pipe pair, both past their Hellos.
async function sessions (hostB: SessionHost = host('b')): Promise<{ a: Pipe, b: Pipe, sa: PeerSession, sb: PeerSession }> {
  const [a, b] = pair()
  const sa = new PeerSession(a, Buffer.alloc(32, 2), host('a'))
  const sb = new PeerSession(b, Buffer.alloc(32, 1), hostB)
  await Promise.all([sa.ready, sb.ready])
  return { a, b, sa, sb }
}

const blocks = new Map<string, Buffer>()
for (let i = 0; i < 64; i++) {
  const b = crypto.randomBytes(4096)
  b.fill(0, 0, 2048) // compressible
  blocks.set(hash(b).toString('hex'), b)
}
const manifestBytes = crypto.randomBytes(3 << 20)
const manifestRoot = hash(manifestBytes)

function host (name: string): SessionHost {
  return {
    hostName: name,
    codecs: [Codec.RAW, Codec.ZSTD],
    uploadLimiter: new RateLimiter(0),
    peerUploadLimit: 0,
    helloAdverts: () => [],
    onHello: () => {},
    onAdverts: () => {},
    onHave: () => {},
    readManifest: async root => root.equals(manifestRoot) ? manifestBytes : undefined,
    readBlocks: async hashes => {
      const sizes: number[] = []
      const parts: Buffer[] = []
      for (let o = 0; o < hashes.length; o += 32) {
        const b = blocks.get(hashes.subarray(o, o + 32).toString('hex'))
        sizes.push(b ? b.length : 0)
        if (b) parts.push(b)
      }
      return { sizes, data: Buffer.concat(parts) }
    }
  }
}

t.test('frames round-trip and split anywhere', async t => {
  const frames = [
    encodeFrame('Hello', { version: WIRE_VERSION, host: 'a', codecs: [Codec.ZSTD], adverts: [] }),
    encodeFrame('BlockRequest', { id: 7, hashes: Buffer.alloc(64, 1) }),
    encodeFrame('BlockResponse', { id: 7, codec: Codec.RAW, sizes: [3, 0], data: Buffer.from('abc') }),
    encodeFrame('Error', { id: 0, code: 'X' })
  ]
  const all = Buffer.concat(frames)
  for (let cut = 0; cut <= all.length; cut += 3) {
    const d = new FrameDecoder()
    const out = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))]
    t.equal(out.length, frames.length)
    if (cut === 0) {
      t.same(decodeMessage(out[1]!), { type: 'BlockRequest', body: { id: 7, hashes: Buffer.alloc(64, 1), background: false, root: null } })
      t.equal(decodeMessage(out[2]!).type, 'BlockResponse')
    }
  }
  t.throws(() => new FrameDecoder().push(Buffer.from([0xff, 0, 0, 0])), { code: 'FRAME_TOO_LARGE' }, 'oversize refused from its length')
  t.throws(() => decodeMessage(Buffer.from([200])), { code: 'PROTOCOL_ERROR' }, 'unknown type')
  t.throws(() => decodeMessage(Buffer.from([TYPES.BlockRequest, 8, 1, 18, 3, 1, 2, 3])), { code: 'PROTOCOL_ERROR' }, 'hash list not a multiple of 32')
  t.throws(() => encodeFrame('BlockResponse', { id: 1, codec: Codec.RAW, sizes: [], data: Buffer.alloc(MAX_FRAME_BYTES) }), { code: 'FRAME_TOO_LARGE' })
})

t.test('adverts are signed by the builder key', async t => {
  const kp = DHT.keyPair()
  const body = { root: hash(Buffer.from('x')), name: 'minbase', size: 1 << 30, blockSize: 4096, specKey: null, builder: kp.publicKey }
  const advert: Advert = { ...body, signature: sign(advertSigningBytes(body), kp) }
  t.ok(verify(advertSigningBytes(advert), advert.signature, kp.publicKey))
  t.notOk(verify(advertSigningBytes({ ...advert, name: 'other' }), advert.signature, kp.publicKey))
  const frame = encodeFrame('Adverts', { adverts: [advert] })
  const back = decodeMessage(frame.subarray(4))
  t.equal(back.type, 'Adverts')
})

t.test('a relabelled advert carries a signed revision that supersedes the builder\'s older ones', async t => {
  const kp = DHT.keyPair()
  const v0 = signedAdvert(kp, ['role=db'], null)
  const v1 = signedAdvert(kp, ['role=web'], 1)
  const back = decodeMessage(encodeFrame('Adverts', { adverts: [v1] }).subarray(4))
  const got = (back.body as { adverts: Advert[] }).adverts[0]!
  t.equal(got.revision, 1)
  t.ok(verify(advertRevSigningBytes(got), got.revSignature!, kp.publicKey), 'the revision verifies')
  t.ok(verify(advertExtSigningBytes(got), got.extSignature!, kp.publicKey), 'a peer that predates revisions still verifies the new labels')
  t.notOk(verify(advertRevSigningBytes({ ...got, revision: 9 }), got.revSignature!, kp.publicKey), 'a raised revision does not verify')
  t.ok(supersedes(v1, v0))
  t.notOk(supersedes(v0, v1))
  t.notOk(supersedes(v1, v1), 'the same revision supersedes nothing')
  const other = DHT.keyPair()
  t.notOk(supersedes({ ...v1, builder: other.publicKey }, v0), 'another builder\'s advert never replaces one')
  t.throws(() => decodeMessage(encodeFrame('Adverts', { adverts: [{ ...v1, extSignature: null }] }).subarray(4)), { code: 'PROTOCOL_ERROR' }, 'a revision without the labels\' signature is refused')
})

t.test('a manifest is fetched in ranged parts spread over its holders', async t => {
  const [a, b] = pair()
  const [c, d] = pair()
  const sa = new PeerSession(a, Buffer.alloc(32, 2), host('a'))
  const sb = new PeerSession(b, Buffer.alloc(32, 1), host('b'))
  const sc = new PeerSession(c, Buffer.alloc(32, 3), host('a'))
  const sd = new PeerSession(d, Buffer.alloc(32, 1), host('d'))
  await Promise.all([sa.ready, sb.ready, sc.ready, sd.ready])
  t.ok(sa.supports('manifest-range'))
  const m = await sa.getManifest(manifestRoot, 16 << 20, [sc])
  t.ok(m.equals(manifestBytes), 'byte-identical')
  // 256 KiB first from b, then 2.75 MiB in 3 parts: d, b, d.
  const part = Math.ceil((manifestBytes.length - (256 << 10)) / 3)
  t.equal(sb.stats.rawOut, (256 << 10) + part, 'b: the first chunk and one part')
  t.equal(sd.stats.rawOut, manifestBytes.length - (256 << 10) - part, 'd: two parts')
  t.equal(sb.stats.rawOut + sd.stats.rawOut, manifestBytes.length, 'each byte asked for once')
  for (const s of [sa, sc]) s.destroy()
})

t.test('a seeding request names its image, and is served under that image\'s limiter', async t => {
  const asked: Array<string | undefined> = []
  const limiter = new RateLimiter(0)
  const { sa } = await sessions({ ...host('b'), backgroundLimiter: root => { asked.push(root?.toString('hex')); return limiter } })
  const hashes = Buffer.concat([...blocks.keys()].slice(0, 4).map(k => Buffer.from(k, 'hex')))
  const root = Buffer.alloc(32, 7)
  const got = await sa.getBlocks(hashes, undefined, root)
  t.equal(got.sizes.length, 4)
  await sa.getBlocks(hashes)
  t.same(asked, [root.toString('hex')], 'the limiter is asked for once, for the background request\'s image')
  t.ok(limiter.bytes >= got.data.length * 0.2, `and counts what went out (${limiter.bytes} bytes)`)
  sa.destroy()
})

t.test('a session serves manifests in chunks and blocks compressed', async t => {
  const { sa, sb } = await sessions()
  t.equal(sa.codec, Codec.ZSTD)
  const m = await sa.getManifest(manifestRoot, 16 << 20)
  t.ok(m.equals(manifestBytes), 'manifest of 3 MiB in chunks')
  const keys = [...blocks.keys()].slice(0, 10)
  const hashes = Buffer.concat([...keys.map(k => Buffer.from(k, 'hex')), Buffer.alloc(32, 9)])
  const before = sa.stats.bytesIn
  const got = await sa.getBlocks(hashes)
  t.same(got.sizes, [...keys.map(() => 4096), 0], 'missing block has size 0')
  t.ok(got.data.equals(Buffer.concat(keys.map(k => blocks.get(k)!))))
  t.ok(sa.stats.bytesIn - before < got.data.length * 0.7, `compressed on the wire (${sa.stats.bytesIn - before} for ${got.data.length})`)
  await t.rejects(sa.getManifest(Buffer.alloc(32), 1 << 20), { code: 'PEER_GONE' })
  sa.destroy()
  t.ok(sb.closed || await new Promise(resolve => sb.once('close', () => resolve(true))))
})

t.test('a manifest delta in runs only to a peer that reads them', async t => {
  const base = createManifest(4096, 64 * 4096, crypto.randomBytes(64 * 32))
  const next = createManifest(4096, 64 * 4096, Buffer.concat([base.hashes.subarray(32), crypto.randomBytes(32)]))
  const asked: number[] = []
  const { sa, sb } = await sessions({ ...host('b'), readManifestDelta: async (root, from, version) => { asked.push(version); return root.equals(next.root) && from.equals(base.root) ? encodeManifestDelta(base, next, version) : undefined } })
  const runs = await sa.getManifestDelta(next.root, base.root, 1 << 20)
  t.ok(runs.delta && runs.data[4] === 2, 'version 2 to this version')
  t.ok(applyManifestDelta(base, runs.data).root.equals(next.root))
  // As if the client were a version before runs.
  sb.remoteHello!.features = sb.remoteHello!.features!.filter(f => f !== 'manifest-delta-runs')
  const slots = await sa.getManifestDelta(next.root, base.root, 1 << 20)
  t.ok(slots.delta && slots.data[4] === 1, 'version 1 to a peer without the feature')
  t.ok(applyManifestDelta(base, slots.data).root.equals(next.root))
  t.same(asked, [2, 1])
  sa.destroy()
})

t.test('a stream that backs up again and again leaves no listeners behind', async t => {
  const { a, b, sa, sb } = await sessions()
  a.backedUp = b.backedUp = true
  const hashes = Buffer.concat([...blocks.keys()].slice(0, 4).map(k => Buffer.from(k, 'hex')))
  for (let i = 0; i < 50; i++) t.same((await sa.getBlocks(hashes)).sizes, [4096, 4096, 4096, 4096])
  t.ok(a.written.length >= 50 && b.written.length >= 50, 'every request and answer went through a backed-up stream')
  t.ok(sa.listenerCount('close') <= 1 && sb.listenerCount('close') <= 1, `close listeners: ${sa.listenerCount('close')}, ${sb.listenerCount('close')}`)
  t.ok(a.listenerCount('drain') <= 1 && b.listenerCount('drain') <= 1, `drain listeners: ${a.listenerCount('drain')}, ${b.listenerCount('drain')}`)
  sa.destroy()
})

t.test('10,000 random, mutated or truncated frames each end only their session', async t => {
  const valid = [
    encodeFrame('BlockRequest', { id: 1, hashes: Buffer.concat([...blocks.keys()].slice(0, 4).map(k => Buffer.from(k, 'hex'))) }),
    encodeFrame('ManifestRequest', { id: 2, root: manifestRoot, offset: 0 }),
    encodeFrame('Have', { root: manifestRoot, start: 0, bitfield: Buffer.alloc(8, 0xff) }),
    encodeFrame('BlockResponse', { id: 1, codec: Codec.ZSTD, sizes: [4096], data: Buffer.from('not zstd') }),
    encodeFrame('ManifestResponse', { id: 9, total: 10, offset: 0, data: Buffer.alloc(10) })
  ]
  const hello = encodeFrame('Hello', { version: WIRE_VERSION, host: 'fuzz', codecs: [Codec.ZSTD], adverts: [] })
  let ended = 0
  let survived = 0
  const rnd = (n: number) => crypto.randomInt(n)
  for (let i = 0; i < 10_000; i++) {
    const [a, b] = pair()
    const s = new PeerSession(a, Buffer.alloc(32, 3), host('daemon'))
    b.peer = undefined // the fuzzer does not read replies
    let input: Buffer
    const kind = i % 4
    if (kind === 0) {
      input = crypto.randomBytes(1 + rnd(64))
    } else if (kind === 1) {
      const f = Buffer.from(valid[rnd(valid.length)]!)
      for (let k = 0; k < 1 + rnd(4); k++) f[4 + rnd(f.length - 4)] ^= 1 << rnd(8)
      input = Buffer.concat([hello, f])
    } else if (kind === 2) {
      const f = valid[rnd(valid.length)]!
      const cut = 5 + rnd(f.length - 5)
      const bad = Buffer.from(f.subarray(0, cut))
      bad.writeUInt32BE(cut - 4, 0) // a frame whose body is cut short but whose length says so
      input = Buffer.concat([hello, bad])
    } else {
      const len = Buffer.alloc(5)
      len.writeUInt32BE(rnd(2) ? MAX_FRAME_BYTES + 1 + rnd(1000) : 1, 0)
      len[4] = 100 + rnd(100)
      input = Buffer.concat([hello, len, crypto.randomBytes(rnd(16))])
    }
    a.emit('data', input)
    await new Promise(resolve => setImmediate(resolve))
    if (s.closed) ended++
    else survived++
    s.destroy()
  }
  t.equal(ended + survived, 10_000)
  t.ok(ended > 5000, `most bad inputs ended their session (${ended} ended, ${survived} were harmless or incomplete)`)
  // And the host still serves a well-behaved peer.
  const [a, b] = pair()
  const sa = new PeerSession(a, Buffer.alloc(32, 2), host('a'))
  const sb = new PeerSession(b, Buffer.alloc(32, 1), host('b'))
  await sa.ready
  const k = [...blocks.keys()][0]!
  const got = await sa.getBlocks(Buffer.from(k, 'hex'))
  t.ok(got.data.equals(blocks.get(k)!))
  sa.destroy()
  sb.destroy()
})

// A lane: a second session over its own stream, carrying its session's block traffic.
async function withLane (): Promise<{ sa: PeerSession, sb: PeerSession, la: PeerSession, lb: PeerSession, laneA: Pipe, laneB: Pipe }> {
  const { sa, sb } = await sessions()
  const [laneA, laneB] = pair()
  const la = new PeerSession(laneA, sa.remoteKey, host('a'), 'lane', sa)
  const lb = new PeerSession(laneB, sb.remoteKey, host('b'), 'lane', sb)
  sa.attachLane(la)
  sb.attachLane(lb)
  await Promise.all([la.ready, lb.ready])
  return { sa, sb, la, lb, laneA, laneB }
}

t.test('a lane carries its session\'s block requests; when it goes, they are asked again on the session', async t => {
  const { sa, sb, la, laneA } = await withLane()
  t.teardown(() => { sa.destroy(); sb.destroy() })
  const keys = [...blocks.keys()]
  const got = await sa.getBlocks(Buffer.from(keys[0]!, 'hex'))
  t.ok(got.data.equals(blocks.get(keys[0]!)!), 'the block came back')
  t.ok(la.laneBytes.in >= got.wireBytes!, `over the lane (${la.laneBytes.in} bytes in, ${got.wireBytes} of payload)`)
  t.equal(sa.stats.blocksIn, 1, 'counted on the session')
  // The lane's answers stop; the request in flight on it is asked again on the session.
  laneA.peer!.write = () => true
  const pending = sa.getBlocks(Buffer.from(keys[1]!, 'hex'))
  await new Promise(resolve => setImmediate(resolve))
  la.destroy()
  const again = await pending
  t.ok(again.data.equals(blocks.get(keys[1]!)!), 'answered on the session after the lane went')
  t.equal(sa.lane, undefined, 'the session has no lane now')
  t.notOk(sa.closed, 'and lives on')
})

t.test('a lane takes block traffic only: anything else, or a bad frame, ends the session with that peer', async t => {
  for (const frame of [encodeFrame('Have', { root: Buffer.alloc(32), start: 0, bitfield: Buffer.alloc(1) }), encodeFrame('ManifestRequest', { id: 1, root: Buffer.alloc(32) }), Buffer.from([0, 0, 0, 2, 99, 1])]) {
    const { sa, sb, la, laneB } = await withLane()
    laneB.write(frame)
    await eventually('the lane closed', () => la.closed)
    t.ok(sa.closed, 'the session ended with it')
    t.equal((sa.closeError as OsfarmError).code, 'PROTOCOL_ERROR')
    sb.destroy()
  }
})

t.test('a lane\'s Hello names no adverts and no lane port; a session\'s Hello names its lane port', async t => {
  const [a, b] = pair()
  const lanePort = 4242
  const sa = new PeerSession(a, Buffer.alloc(32, 2), { ...host('a'), lanePort })
  const sb = new PeerSession(b, Buffer.alloc(32, 1), host('b'))
  await Promise.all([sa.ready, sb.ready])
  t.equal(sb.remoteHello?.lanePort, lanePort)
  t.ok(sb.supports('tcp-lane'))
  const [c, d] = pair()
  const lc = new PeerSession(c, sa.remoteKey, { ...host('a'), lanePort }, 'lane', sa)
  const ld = new PeerSession(d, sb.remoteKey, host('b'), 'lane', sb)
  await Promise.all([lc.ready, ld.ready])
  t.notOk(ld.remoteHello?.lanePort, 'no port on a lane')
  t.same(ld.remoteHello?.adverts, [])
  for (const s of [sa, sb]) s.destroy()
})
