// `osfarmd dht`: a DHT node for a fleet's bootstrap list.

import DHT from 'hyperdht'
import { parseHostPort } from './fleet-config.js'

// A DHT node for a fleet's bootstrap list (`osfarmd dht`). Persistent (not ephemeral), so it
// routes for others; binds only where told.
export async function startBootstrapNode (options: { host: string, port: number, bootstrap?: string[] }): Promise<DHT> {
  const node = new DHT({
    ephemeral: false,
    firewalled: false,
    bootstrap: (options.bootstrap ?? []).map(parseHostPort),
    host: options.host,
    port: options.port
  })
  await node.fullyBootstrapped()
  return node
}
