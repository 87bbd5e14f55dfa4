// Adverts signed as a builder signs them (daemon/adverts/sign-advert.ts), for tests of the wire
// and the swarm without a daemon.

import type { KeyPair } from 'hyperdht'
import type { Advert } from '../protocol/wire.js'
import { signAdvert } from '../daemon/adverts/sign-advert.js'
import { hash } from '../daemon/blocks/hash.js'

export function signedAdvert (kp: KeyPair, labels: string[], revision: number | null, name = 'web'): Advert {
  return signAdvert(kp, { root: hash(Buffer.from(name)), name, size: 1 << 20, blockSize: 4096, specKey: null, created: 1000, labels, revision })
}
