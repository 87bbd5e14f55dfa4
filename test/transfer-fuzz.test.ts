import t from 'tap'
import fs from 'node:fs/promises'
import crypto from 'node:crypto'
import DHT from 'hyperdht'
import { Codec, encodeFrame, WIRE_VERSION } from '../protocol/wire.js'
import { makeImagePair, sha256, startFleet, tempDir, waitPeers } from '../testing/fleet.js'
import path from 'node:path'

// 100 connections × 100 frames: random well-formed requests, then one random, mutated or
// truncated frame that must end that session; the daemon must go on serving.
t.test('10,000 random or truncated frames leave the daemon serving', async t => {
  const fleet = await startFleet(2, t.teardown)
  const [a, b] = fleet.daemons as [any, any]
  const dir = await tempDir('osfarm-fuzz-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 1024)
  const img = await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  const keyPair = DHT.keyPair()
  await a.ctlJson('fleet', 'allow', keyPair.publicKey.toString('hex'))
  const dht = new DHT({ bootstrap: fleet.bootstrap.split(',').map(s => ({ host: s.split(':')[0]!, port: Number(s.split(':')[1]) })), host: '127.0.0.1' })
  t.teardown(() => dht.destroy())
  const target = Buffer.from(fleet.keys[0]!, 'hex')
  const root = Buffer.from(img.root, 'hex')
  const rnd = (n: number) => crypto.randomInt(n)
  let frames = 0
  let endedByPeer = 0
  for (let c = 0; c < 100; c++) {
    const conn = (dht as any).connect(target, { keyPair })
    conn.on('error', () => {})
    await new Promise<void>((resolve, reject) => { conn.once('open', resolve); conn.once('close', () => reject(new Error('closed before open'))) })
    conn.on('data', () => {})
    const closed = new Promise<void>(resolve => conn.once('close', resolve))
    conn.write(encodeFrame('Hello', { version: WIRE_VERSION, host: 'fuzz', codecs: [Codec.ZSTD], adverts: [] }))
    frames++
    for (let i = 0; i < 98; i++) {
      const k = rnd(4)
      const f = k === 0
        ? encodeFrame('BlockRequest', { id: rnd(1e6), hashes: crypto.randomBytes(32 * (1 + rnd(64))) })
        : k === 1
          ? encodeFrame('ManifestRequest', { id: rnd(1e6), root: rnd(2) ? root : crypto.randomBytes(32), offset: rnd(4096) })
          : k === 2
            ? encodeFrame('Have', { root: crypto.randomBytes(32), start: 8 * rnd(100), bitfield: crypto.randomBytes(rnd(64)) })
            : encodeFrame('Cancel', { id: rnd(1e6) })
      conn.write(f)
      frames++
    }
    // The last frame of the session: garbage, a bad length, or a mutated or truncated valid one.
    const valid = encodeFrame('BlockRequest', { id: 1, hashes: crypto.randomBytes(64) })
    const kind = c % 3
    let last: Buffer
    if (kind === 0) last = Buffer.concat([Buffer.from([0, 0, 0, 9, 200 + rnd(50)]), crypto.randomBytes(8)])
    else if (kind === 1) { last = Buffer.from(valid); last.writeUInt32BE(0x7fffffff, 0) } else { last = Buffer.from(valid.subarray(0, 5 + rnd(20))); last.writeUInt32BE(last.length - 4, 0) }
    conn.write(last)
    frames++
    const ended = await Promise.race([closed.then(() => true), new Promise<boolean>(resolve => setTimeout(() => resolve(false), 5000))])
    if (ended) endedByPeer++
    conn.destroy()
  }
  t.equal(frames, 10_000, 'sent 10,000 frames')
  t.equal(endedByPeer, 100, 'every bad frame ended its session')
  const status = await a.ctlJson('status')
  t.ok(status.pid, 'the daemon is alive')
  await waitPeers(b, 1)
  const r = await b.ctlJson('fetch', 'derived')
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'and still serves a good fetch')
  t.ok(r.stats.received > 0)
})
