// Signing an advert: what a builder puts its key to. The base fields, the appended ones
// (created, labels), the revision once relabelled and the version each carry a signature; and
// checking them on an advert from a peer.

import type { KeyPair } from 'hyperdht'
import { advertExtSigningBytes, advertRevSigningBytes, advertSigningBytes, advertVerSigningBytes, type Advert } from '../../protocol/wire.js'
import { PROTOCOL_ERROR } from '../../protocol/errors.js'
import { sign, verify } from '../fleet/identity.js'

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

// Checks an advert's signatures (throws PROTOCOL_ERROR); fields appended later count only when
// the builder signed them too (else they are cleared).
export function checkAdvertSignatures (a: Advert): void {
  if (!verify(advertSigningBytes(a), a.signature, a.builder)) throw PROTOCOL_ERROR('advert with a bad signature')
  if (a.extSignature) {
    if (!verify(advertExtSigningBytes(a), a.extSignature, a.builder)) throw PROTOCOL_ERROR('advert with a bad extension signature')
  } else {
    a.created = null
    a.labels = []
  }
  if (a.revSignature) {
    if (!verify(advertRevSigningBytes(a), a.revSignature, a.builder)) throw PROTOCOL_ERROR('advert with a bad revision signature')
  } else {
    a.revision = null
  }
  if (a.verSignature && a.extSignature) {
    if (!verify(advertVerSigningBytes(a), a.verSignature, a.builder)) throw PROTOCOL_ERROR('advert with a bad version signature')
  } else {
    a.version = null
  }
}
