// Adverts signed as a builder signs them (daemon/transfer TransferService.signAdvert), for tests
// of the wire and the swarm without a daemon.

import type { KeyPair } from 'hyperdht'
import { advertExtSigningBytes, advertRevSigningBytes, advertSigningBytes, type Advert } from '../../protocol/wire.js'
import { sign } from '../../daemon/swarm/identity.js'
import { hash } from '../../daemon/blocks/hash.js'

export function signedAdvert (kp: KeyPair, labels: string[], revision: number | null, name = 'web'): Advert {
  const body = { root: hash(Buffer.from(name)), name, size: 1 << 20, blockSize: 4096, specKey: null, builder: kp.publicKey, created: 1000, labels, revision }
  const a: Advert = { ...body, signature: sign(advertSigningBytes(body), kp), extSignature: sign(advertExtSigningBytes(body), kp) }
  if (revision) a.revSignature = sign(advertRevSigningBytes(body), kp)
  return a
}
