import t from 'tap'
import { eventually } from '../testing/eventually.js'
import createTestnet from 'hyperdht/testnet.js'
import DHT from 'hyperdht'
import { FleetSwarm, type BlockSource } from '../daemon/fleet/fleet-swarm.js'
import { fleetTopic, newFleetConfig, rootTopic, type FleetConfig } from '../daemon/fleet/fleet-config.js'
import { advertSigningBytes, type Advert } from '../protocol/wire.js'
import { sign } from '../daemon/fleet/identity.js'
import { hash } from '../daemon/blocks/hash.js'
import type { PeerSession } from '../daemon/fleet/peer-session.js'
import { signedAdvert } from '../testing/adverts.js'

const source: BlockSource = {
  readManifest: async () => undefined,
  readBlocks: async hashes => ({ sizes: new Array(hashes.length / 32).fill(0), data: Buffer.alloc(0) })
}

// True once cond holds, false if it does not within ms.
const until = (cond: () => boolean, ms = 15_000): Promise<boolean> => eventually('the condition', cond, { timeoutMs: ms, intervalMs: 50 }).then(() => true, () => false)

t.test('allow-listed hosts connect and exchange signed adverts; others are refused', async t => {
  const testnet = await createTestnet(3, t.teardown)
  const bootstrap = testnet.bootstrap.map(b => `${b.host}:${b.port}`)
  const keys = [DHT.keyPair(), DHT.keyPair(), DHT.keyPair()]
  const secret = newFleetConfig().secret
  const allow = [keys[0]!, keys[1]!].map(k => k.publicKey.toString('hex'))
  const cfg = (): FleetConfig => newFleetConfig({ secret, allow, bootstrap, dht: { host: '127.0.0.1' } })
  const a = await FleetSwarm.open({ keyPair: keys[0]!, config: cfg(), source, hostName: 'a' })
  t.teardown(() => a.close())
  const body = { root: hash(Buffer.from('image')), name: 'minbase', size: 1 << 20, blockSize: 4096, specKey: null, builder: keys[0]!.publicKey }
  const advert: Advert = { ...body, signature: sign(advertSigningBytes(body), keys[0]!) }
  a.advertise([advert])
  const b = await FleetSwarm.open({ keyPair: keys[1]!, config: cfg(), source, hostName: 'b' })
  t.teardown(() => b.close())
  // The intruder knows the secret (the worst case) but its key is not on the list.
  // The refusal itself is the event waited for (bounded), not a quiet spell.
  const refused = new Promise<boolean>(resolve => {
    const timer = setTimeout(() => resolve(false), 30_000)
    const on = (key: Buffer) => { if (key.equals(keys[2]!.publicKey)) { clearTimeout(timer); resolve(true) } }
    a.on('refused', on)
    b.on('refused', on)
  })
  const c = await FleetSwarm.open({ keyPair: keys[2]!, config: newFleetConfig({ secret, allow: [...allow, keys[2]!.publicKey.toString('hex')], bootstrap, dht: { host: '127.0.0.1' } }), source, hostName: 'c' })
  t.teardown(() => c.close())
  t.ok(await until(() => b.holders(advert.root.toString('hex')).length === 1), 'b sees a as a holder')
  t.equal(b.peerAdverts()[0]!.advert.name, 'minbase')
  await c.flush()
  t.ok(await refused, 'the fleet refused the intruder\'s key')
  t.equal(c.sessions.size, 0, 'the intruder has no session')
  t.same(c.peerAdverts(), [], 'and learned no image names')
  t.equal(a.peers().length, 1)
  t.equal(a.peers()[0]!.host, 'b')
  // Denying b disconnects it.
  a.reconfigure({ ...a.config, allow: [allow[0]!] })
  t.ok(await until(() => a.sessions.size === 0 && b.sessions.size === 0), 'denied peer disconnected')
})

t.test('a relabelled advert replaces older copies of it; a stale copy heard later does not undo it', async t => {
  const testnet = await createTestnet(3, t.teardown)
  const config = newFleetConfig({ allow: [], bootstrap: testnet.bootstrap.map(b => `${b.host}:${b.port}`), dht: { host: '127.0.0.1' } })
  const swarm = await FleetSwarm.open({ keyPair: DHT.keyPair(), config, source, hostName: 'x' })
  t.teardown(() => swarm.close())
  // Two peers' sessions, as far as adverts go.
  const session = (hex: string) => ({ remoteHex: hex, adverts: new Map(), haves: new Map(), destroy () {} }) as unknown as PeerSession
  const [s1, s2] = [session('01'), session('02')]
  swarm.sessions.set('01', s1)
  swarm.sessions.set('02', s2)
  const revised: Advert[] = []
  swarm.on('revised', (a: Advert) => revised.push(a))
  const builder = DHT.keyPair()
  const hex = signedAdvert(builder, [], null).root.toString('hex')
  swarm.onAdverts(s1, [signedAdvert(builder, ['role=db'], null)])
  swarm.onAdverts(s2, [signedAdvert(builder, ['role=db'], null)])
  t.same(revised, [], 'an advert as built is no relabelling')
  const v1 = signedAdvert(builder, ['role=web'], 1)
  swarm.onAdverts(s1, [v1])
  t.same(revised.map(a => a.labels), [['role=web']], 'the relabelling is announced once')
  t.same(s2.adverts.get(hex)!.labels, ['role=web'], 'and replaces the older copy another peer sent')
  swarm.onAdverts(s2, [signedAdvert(builder, ['role=db'], null)])
  t.same(s2.adverts.get(hex)!.labels, ['role=web'], 'a stale copy heard later does not undo it')
  t.equal(swarm.newest(signedAdvert(builder, ['role=db'], null)), v1)
  swarm.onAdverts(s1, [v1])
  t.equal(revised.length, 1, 'hearing it again announces nothing')
  t.throws(() => swarm.onAdverts(s1, [{ ...signedAdvert(builder, ['role=ops'], 1), revision: 7 }]), { code: 'PROTOCOL_ERROR' }, 'a forged revision is refused')
  const other = signedAdvert(DHT.keyPair(), ['role=db'], null)
  swarm.onAdverts(s2, [other])
  t.equal(s2.adverts.get(hex), other, 'another builder\'s advert for the same content is its own')
  t.equal(swarm.newest(other), other)
})

t.test('topics are keyed by the fleet secret', async t => {
  const s1 = newFleetConfig().secret
  const s2 = newFleetConfig().secret
  t.notSame(fleetTopic(s1), fleetTopic(s2))
  t.notSame(rootTopic(s1, Buffer.alloc(32)), rootTopic(s2, Buffer.alloc(32)))
  t.equal(fleetTopic(s1).length, 32)
})
