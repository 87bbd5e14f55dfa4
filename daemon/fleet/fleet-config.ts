// Fleet configuration: the shared secret, the allow-list of host keys, the fleet's own DHT
// bootstrap nodes and optional direct peers. Kept in `<dataDir>/fleet.json`. Without it the
// daemon never opens the swarm; with it, it only ever talks to the bootstrap nodes named here.

import fs from 'node:fs/promises'
import path from 'node:path'
import crypto from 'node:crypto'
import { hashParts } from '../blocks/hash.js'
import { BAD_CONFIG, BAD_PARAMS } from '../../protocol/errors.js'

const FILE = 'fleet.json'
const KEY_HEX = /^[0-9a-f]{64}$/

export interface FleetConfig {
  // 32 random bytes, hex. Whoever holds it can find the fleet's topics.
  secret: string
  // Host public keys (hex) allowed to connect; this host's own key is always allowed.
  allow: string[]
  // "host:port" of DHT bootstrap nodes. Empty: this host is its own (lonely) DHT.
  bootstrap: string[]
  // Host public keys (hex) to connect to directly, without waiting for topic discovery.
  peers: string[]
  // Where this host's DHT node binds; host defaults to 0.0.0.0, port to a random one.
  dht?: { host?: string, port?: number }
  // Block lanes over TCP (tcp-lanes.ts): on unless false; the port, where it is free, is
  // tcpPort, else the DHT node's port number, else any.
  tcpLanes?: boolean
  tcpPort?: number
  // Upload limits in bytes per second (0 or absent: unlimited).
  uploadLimit?: number
  peerUploadLimit?: number
  // Sessions this host keeps at most (default DEFAULT_MAX_PEERS): a larger fleet is a bounded
  // random graph, found through its topics, and images are heard of through peers (offers).
  maxPeers?: number
}

export const DEFAULT_MAX_PEERS = 64
export const MAX_MAX_PEERS = 1024

export function fleetConfigPath (dataDir: string): string {
  return path.join(dataDir, FILE)
}

export async function readFleetConfig (dataDir: string): Promise<FleetConfig | undefined> {
  let text: string
  try {
    text = await fs.readFile(fleetConfigPath(dataDir), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  try {
    return checkFleetConfig(JSON.parse(text))
  } catch (err) {
    throw BAD_CONFIG(`${fleetConfigPath(dataDir)}: ${(err as Error).message}`)
  }
}

export async function writeFleetConfig (dataDir: string, config: FleetConfig): Promise<void> {
  checkFleetConfig(config)
  await fs.mkdir(dataDir, { recursive: true })
  const file = fleetConfigPath(dataDir)
  const tmp = `${file}.${process.pid}.tmp`
  await fs.writeFile(tmp, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 })
  await fs.rename(tmp, file)
}

export function newFleetConfig (options: Partial<FleetConfig> = {}): FleetConfig {
  return checkFleetConfig({
    secret: options.secret ?? crypto.randomBytes(32).toString('hex'),
    allow: options.allow ?? [],
    bootstrap: options.bootstrap ?? [],
    peers: options.peers ?? [],
    ...(options.dht ? { dht: options.dht } : {})
  })
}

export function checkFleetConfig (c: unknown): FleetConfig {
  const o = c as FleetConfig
  if (typeof o !== 'object' || o === null) throw BAD_CONFIG('fleet config must be an object')
  if (typeof o.secret !== 'string' || !KEY_HEX.test(o.secret)) throw BAD_CONFIG('secret must be 64 hex digits')
  for (const field of ['allow', 'peers'] as const) {
    if (!Array.isArray(o[field]) || !o[field].every(k => typeof k === 'string' && KEY_HEX.test(k))) throw BAD_CONFIG(`${field} must be a list of 64-hex-digit keys`)
  }
  if (!Array.isArray(o.bootstrap)) throw BAD_CONFIG('bootstrap must be a list of host:port')
  o.bootstrap.forEach(parseHostPort)
  if (o.tcpLanes !== undefined && typeof o.tcpLanes !== 'boolean') throw BAD_CONFIG('tcpLanes must be true or false')
  if (o.tcpPort !== undefined && !(Number.isInteger(o.tcpPort) && o.tcpPort >= 1 && o.tcpPort <= 65535)) throw BAD_CONFIG('tcpPort must be a port number (1-65535)')
  if (o.maxPeers !== undefined && !(Number.isInteger(o.maxPeers) && o.maxPeers >= 2 && o.maxPeers <= MAX_MAX_PEERS)) throw BAD_CONFIG(`maxPeers must be a whole number from 2 to ${MAX_MAX_PEERS}`)
  return o
}

export function parseHostPort (s: string): { host: string, port: number } {
  const m = /^([^:\s]+):(\d{1,5})$/.exec(s)
  const port = m ? Number(m[2]) : NaN
  if (!m || port < 1 || port > 65535) throw BAD_CONFIG(`bad bootstrap node ${JSON.stringify(s)} (want host:port)`)
  return { host: m[1]!, port }
}

export function parseKey (s: string): Buffer {
  const k = s.trim().toLowerCase()
  if (!KEY_HEX.test(k)) throw BAD_PARAMS(`not a host key (64 hex digits): ${JSON.stringify(s)}`)
  return Buffer.from(k, 'hex')
}

// Topics are keyed by the secret, so only fleet members can find (or announce on) them.
export function fleetTopic (secret: string): Buffer {
  return hashParts(['osfarm/fleet/v1\0', Buffer.from(secret, 'hex')])
}

export function rootTopic (secret: string, root: Uint8Array): Buffer {
  return hashParts(['osfarm/root/v1\0', Buffer.from(secret, 'hex'), root])
}
