// A fleet across network namespaces (scripts/lab): hosts on separate addresses, three DHT nodes
// on the hub. On 127.0.0.1 hosts share one address and hyperdht takes its LAN shortcut; here
// they go through the DHT's reachability test and connect as hosts of a real network do. Before
// the swarm ran that test itself, 4 fresh hosts did not form a fleet in 50 s in 4 runs of 5.
// Needs root (namespaces); skipped without it.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { Lab, waitJob, type Host } from '../scripts/bench/lab-hosts.js'
import { makeImage } from '../testing/images.js'
import { sha256 } from '../testing/fleet.js'

const HOSTS = 4
const FORM_LIMIT_MS = 10_000
const WORK = '/tmp/osft-lab-fleet'

t.test('fleet across namespaces: fresh hosts connect within seconds, then a fetch crosses the hub', { skip: process.getuid?.() !== 0 && 'needs root' }, async t => {
  const lab = new Lab('osft')
  await fs.rm(WORK, { recursive: true, force: true })
  t.teardown(async () => {
    await lab.down()
    await fs.rm(WORK, { recursive: true, force: true })
  })
  await lab.up(HOSTS, '1gbit')
  const hosts: Host[] = []
  for (let i = 1; i <= HOSTS; i++) hosts.push(await lab.startHost(`p${i}`, `10.201.${i}.2`, path.join(WORK, `p${i}`)))
  for (const h of hosts) h.key = (await h.client.call('fleet.show', {})).publicKey
  let secret = ''
  const start = Date.now()
  for (const h of hosts) {
    const peers = hosts.filter(o => o !== h).map(o => o.key)
    const info = await h.client.call('fleet.init', { ...(secret ? { secret } : {}), bootstrap: ['10.201.1.1:49737', '10.201.1.1:49738', '10.201.1.1:49739'], dhtHost: h.addr, peers })
    secret ||= info.secret!
  }
  let counts: number[] = []
  while (Date.now() - start < FORM_LIMIT_MS) {
    counts = await Promise.all(hosts.map(h => h.client.call('peer.list', {}).then(l => l.length)))
    if (counts.every(c => c === HOSTS - 1)) break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  t.same(counts, hosts.map(() => HOSTS - 1), `every host has a session with every other (${Date.now() - start} ms)`)

  // An image on p1, fetched by p4 (its link and p1's both pass the hub).
  const file = path.join(WORK, 'img.raw')
  await makeImage(file, { blocks: 2048, tail: 777 })
  const imported = await waitJob(hosts[0]!, (await hosts[0]!.client.call('image.import', { path: file, name: 'lab' })).id, 60_000)
  t.equal(imported.state, 'done', 'imported')
  const root = (imported.result as { root: string }).root
  const fetched = await waitJob(hosts[3]!, (await hosts[3]!.client.call('image.fetch', { ref: root })).id, 60_000)
  t.equal(fetched.state, 'done', `fetch across namespaces${fetched.error ? `: ${fetched.error.message}` : ''}`)
  const out = path.join(WORK, 'out.raw')
  const exported = await waitJob(hosts[3]!, (await hosts[3]!.client.call('image.export', { id: root, path: out, format: 'raw' })).id, 60_000)
  t.equal(exported.state, 'done', 'exported')
  t.equal(await sha256(out), await sha256(file), 'byte-identical')
})
