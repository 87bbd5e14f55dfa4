// What the fleet's peers advertise, grouped by manifest root with the peers that hold each: the
// console shows which hosts hold an image and offers to fetch the others.

import type { FleetImage } from '../../protocol/rpc.js'
import type { FleetSwarm } from '../fleet/fleet-swarm.js'

export function fleetImages (swarm: FleetSwarm | undefined): FleetImage[] {
  if (!swarm) return []
  const byRoot = new Map<string, FleetImage>()
  for (const { advert, peer } of swarm.peerAdverts()) {
    if (peer.closed || !peer.remoteHello) continue
    const root = advert.root.toString('hex')
    let image = byRoot.get(root)
    if (!image) byRoot.set(root, image = { root, name: advert.name, size: advert.size, labels: advert.labels ?? [], holders: [] })
    if (!image.holders.some(h => h.key === peer.remoteHex)) image.holders.push({ key: peer.remoteHex, host: peer.remoteHello.host })
  }
  return [...byRoot.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}
