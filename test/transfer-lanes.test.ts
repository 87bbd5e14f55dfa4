// Block lanes over TCP (daemon/fleet/tcp-lanes.ts) between real daemons: blocks take the lane
// where both hosts have one, the swarm connection where one has none, and one fetch can use both.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import net from 'node:net'
import crypto from 'node:crypto'
import SecretStream from '@hyperswarm/secret-stream'
import DHT from 'hyperdht'
import { makeImagePair, sha256, startFleet, tempDir } from '../testing/fleet.js'
import { eventually } from '../testing/eventually.js'
import type { TestDaemon } from '../testing/daemon.js'
import type { PeerInfo } from '../protocol/rpc.js'

async function peerOf (d: TestDaemon, key: string): Promise<PeerInfo | undefined> {
  return (await d.ctlJson<PeerInfo[]>('peer', 'ls')).find(p => p.key === key)
}

t.test('two hosts: the blocks of a fetch go over the TCP lane, byte-identical', async t => {
  const fleet = await startFleet(2, t.teardown, { connected: true })
  const [a, b] = fleet.daemons as [TestDaemon, TestDaemon]
  const dir = await tempDir('osfarm-lanes-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 4096)
  await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  const shown = await a.ctlJson('fleet', 'show')
  t.ok(shown.lanePort > 0, `A takes lanes on TCP port ${shown.lanePort}`)
  const bad = await a.ctl('fleet', 'init', '--tcp-port', '70000')
  t.not(bad.exitCode, 0, 'a port out of range is refused')
  t.match(bad.stderr, /tcpPort must be a port number/)
  t.equal((await a.ctlJson('fleet', 'show')).lanePort, shown.lanePort, 'and the fleet is as it was')
  await eventually('a lane between A and B', async () => (await peerOf(b, fleet.keys[0]!))?.lane)
  const r = await b.ctlJson('fetch', 'derived')
  const peer = (await peerOf(b, fleet.keys[0]!))!
  t.ok(peer.lane!.bytesIn > 0.95 * r.stats.wireBytes, `the payload came over the lane (${peer.lane!.bytesIn} bytes on it, ${r.stats.wireBytes} of payload)`)
  t.ok(peer.bytesIn - peer.lane!.bytesIn < r.stats.wireBytes / 4, `little of it over the swarm connection (${peer.bytesIn - peer.lane!.bytesIn} bytes, the manifest among them)`)
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})

t.test('one fetch from two holders, one over a lane and one without (--no-tcp-lanes)', async t => {
  // B fetches; A takes no lanes; C does. Both serve at a per-peer limit, so both are needed.
  const limit = ['--peer-upload-limit', '8M']
  const fleet = await startFleet(3, t.teardown, { connected: true, initArgs: [[], ['--no-tcp-lanes', ...limit], limit] })
  const [b, a, c] = fleet.daemons as [TestDaemon, TestDaemon, TestDaemon]
  const [, keyA, keyC] = fleet.keys as [string, string, string]
  t.equal((await a.ctlJson('fleet', 'show')).lanePort, null, 'A takes no lanes')
  const dir = await tempDir('osfarm-lanes-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 6144)
  for (const d of [a, c]) await d.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await eventually('a lane between B and C', async () => (await peerOf(b, keyC))?.lane)
  const r = await b.ctlJson('fetch', 'derived')
  t.ok(r.stats.peers[keyA].blocks > 0, `A served ${r.stats.peers[keyA].blocks} blocks over the swarm connection`)
  t.ok(r.stats.peers[keyC].blocks > 0, `C served ${r.stats.peers[keyC].blocks} blocks over its lane`)
  t.equal((await peerOf(b, keyA))!.lane, null, 'no lane with A')
  t.ok((await peerOf(b, keyC))!.lane!.bytesIn > r.stats.peers[keyC].wireBytes / 2, 'C\'s blocks came over the lane')
  const out = path.join(dir, 'out.img')
  await b.ctlJson('image', 'export', 'derived', '-o', out)
  t.equal(await sha256(out), await sha256(pair.derived), 'byte-identical')
})

t.test('the lane port: an off-list key and bytes that are no handshake are refused; the host serves on', async t => {
  const fleet = await startFleet(2, t.teardown, { connected: true })
  const [a, b] = fleet.daemons as [TestDaemon, TestDaemon]
  const port: number = (await a.ctlJson('fleet', 'show')).lanePort
  // A handshake with a key A does not allow: A closes the stream without a word.
  const stranger = new SecretStream(true, net.connect({ host: '127.0.0.1', port }), { keyPair: DHT.keyPair() })
  let heard = 0
  stranger.on('data', () => { heard++ })
  stranger.on('error', () => {})
  await new Promise(resolve => stranger.once('close', resolve))
  t.equal(heard, 0, 'an off-list key hears nothing')
  // Garbage in place of a handshake.
  const raw = net.connect({ host: '127.0.0.1', port })
  raw.on('error', () => {})
  raw.write(crypto.randomBytes(4096))
  await new Promise(resolve => raw.once('close', resolve))
  t.pass('a connection that sends no handshake is closed')
  // A still serves its peer, over its lane.
  const dir = await tempDir('osfarm-lanes-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 1024)
  const img = await a.ctlJson('image', 'import', pair.derived, '--name', 'derived')
  await eventually('a lane between A and B', async () => (await peerOf(b, fleet.keys[0]!))?.lane)
  const r = await b.ctlJson('fetch', 'derived')
  t.equal(r.image.root, img.root, 'fetched after the refusals')
})
