// A real peer process that serves an image with every block corrupted (one byte flipped): the
// fault the fetch engine must catch. Not part of osfarmd; run by the transfer fault tests.
//
//   node dist/testing/bad-peer.js   with BAD_PEER='{"image":..., "secret":..., "bootstrap":[...], "allow":[...]}'
// Prints {"key": "<hex>"} once it is on the fleet's DHT and advertising the image.

import DHT from 'hyperdht'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { LocalBlocks } from '../daemon/blocks/local-blocks.js'
import { FleetSwarm } from '../daemon/fleet/fleet-swarm.js'
import { signAdvert } from '../daemon/adverts/sign-advert.js'

const cfg = JSON.parse(process.env.BAD_PEER ?? '{}') as { image: string, name: string, secret: string, bootstrap: string[], allow: string[] }
const hasher = new BlockHasher(1)
const manifest = await hasher.indexFile(cfg.image)
await hasher.close()
const local = new LocalBlocks()
local.addVolume('bad', cfg.image, manifest)
const keyPair = DHT.keyPair()
const key = keyPair.publicKey.toString('hex')
const swarm = await FleetSwarm.open({
  keyPair,
  hostName: 'bad-peer',
  config: { secret: cfg.secret, allow: [key, ...cfg.allow], bootstrap: cfg.bootstrap, peers: [], dht: { host: '127.0.0.1' } },
  source: {
    readManifest: root => local.readManifest(root),
    async readBlocks (hashes) {
      const batch = await local.readBlocks(hashes)
      let off = 0
      for (const size of batch.sizes) {
        if (size) batch.data[off + (size >> 1)]! ^= 0x5a
        off += size
      }
      return batch
    }
  }
})
swarm.advertise([signAdvert(keyPair, { root: manifest.root, name: cfg.name, size: manifest.size, blockSize: manifest.blockSize })])
process.stdout.write(JSON.stringify({ key }) + '\n')
process.on('SIGTERM', () => { swarm.close().finally(() => process.exit(0)) })
