// Signing an advert: what a builder puts its key to. The base fields, the appended ones
// (created, labels), the revision once relabelled and the version each carry a signature.

import type { KeyPair } from 'hyperdht'
import { advertExtSigningBytes, advertRevSigningBytes, advertSigningBytes, advertVerSigningBytes, type Advert } from '../../protocol/wire.js'
import { sign } from '../fleet/identity.js'

export interface AdvertBody {
  root: Buffer
  name: string
  size: number
  blockSize: number
  created?: number
  labels?: string[]
  revision?: number | null
  version?: number | null
  specKey?: Buffer | null
}

export function signAdvert (keyPair: KeyPair, a: AdvertBody, now: () => number = Date.now): Advert {
  const body = { root: a.root, name: a.name, size: a.size, blockSize: a.blockSize, specKey: a.specKey ?? null, builder: keyPair.publicKey, created: a.created ?? now(), labels: a.labels ?? [], revision: a.revision || null, version: a.version ?? null }
  const advert: Advert = { ...body, signature: sign(advertSigningBytes(body), keyPair), extSignature: sign(advertExtSigningBytes(body), keyPair) }
  if (body.revision) advert.revSignature = sign(advertRevSigningBytes(body), keyPair)
  if (body.version) advert.verSignature = sign(advertVerSigningBytes(body), keyPair)
  return advert
}
