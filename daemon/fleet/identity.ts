// The daemon's fleet identity: one persisted Noise (Ed25519) key pair, created on first use.
// The public key names the host in allow-lists; the same key signs the adverts it builds.

import fs from 'node:fs/promises'
import path from 'node:path'
import crypto from 'node:crypto'
import DHT, { type KeyPair } from 'hyperdht'
import { BAD_CONFIG } from '../../protocol/errors.js'

const FILE = 'identity.json'
// DER prefixes that wrap a raw Ed25519 seed (PKCS#8) and public key (SPKI) for node:crypto.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

export async function loadIdentity (dataDir: string): Promise<KeyPair> {
  const file = path.join(dataDir, FILE)
  try {
    const { publicKey, secretKey } = JSON.parse(await fs.readFile(file, 'utf8'))
    const kp = { publicKey: Buffer.from(publicKey, 'hex'), secretKey: Buffer.from(secretKey, 'hex') }
    if (kp.publicKey.length !== 32 || kp.secretKey.length !== 64) throw new Error('bad key lengths')
    return kp
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw BAD_CONFIG(`${file}: ${(err as Error).message}`)
  }
  const kp = DHT.keyPair()
  await fs.mkdir(dataDir, { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  await fs.writeFile(tmp, JSON.stringify({ publicKey: kp.publicKey.toString('hex'), secretKey: kp.secretKey.toString('hex') }) + '\n', { mode: 0o600 })
  await fs.rename(tmp, file)
  return kp
}

// libsodium's 64-byte secret key is seed ‖ public key.
export function sign (message: Buffer, keyPair: KeyPair): Buffer {
  const key = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, keyPair.secretKey.subarray(0, 32)]), format: 'der', type: 'pkcs8' })
  return crypto.sign(null, message, key)
}

export function verify (message: Buffer, signature: Buffer, publicKey: Buffer): boolean {
  if (signature.length !== 64 || publicKey.length !== 32) return false
  try {
    const key = crypto.createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' })
    return crypto.verify(null, message, key, signature)
  } catch {
    return false
  }
}
