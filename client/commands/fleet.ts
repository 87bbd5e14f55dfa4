// osfarmctl fleet init|show|allow|deny

import type { Command } from 'commander'
import type { FleetInfo } from '../../protocol/rpc.js'
import { withClient, type CliContext } from '../context.js'
import { printFields, printJson } from '../output.js'
import { parseRate, RATE_UNITS } from '../units.js'

export function register (program: Command, ctx: CliContext): void {
  const fleet = program.command('fleet').description('this host\'s fleet: secret, allow-list, bootstrap nodes')

  fleet.command('init')
    .description('create a fleet, or join one with --secret; prints the secret other hosts need')
    .option('--secret <hex>', 'join the fleet with this secret')
    .option('--bootstrap <nodes>', 'DHT bootstrap nodes, host:port,... (never the public DHT)')
    .option('--peer <keys>', 'hosts to allow and connect to directly, key,...')
    .option('--dht-host <address>', 'address this host\'s DHT node binds')
    .option('--dht-port <port>', 'UDP port of this host\'s DHT node', Number)
    .option('--tcp-lanes', 'carry blocks over TCP lanes to peers that reach this host directly (the default)')
    .option('--no-tcp-lanes', 'carry blocks over the swarm connection only (no TCP lanes to peers that reach this host directly)')
    .option('--tcp-port <port>', 'TCP port for block lanes (default: the DHT port number where free)', Number)
    .option('--max-peers <n>', 'sessions this host keeps at most (default 64); a larger fleet is a bounded random graph', Number)
    .option('--upload-limit <rate>', `upload limit to all peers (${RATE_UNITS})`, parseRate)
    .option('--peer-upload-limit <rate>', `upload limit to each peer (${RATE_UNITS})`, parseRate)
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const info = await c.call('fleet.init', {
        ...(opts.secret ? { secret: opts.secret } : {}),
        ...(opts.bootstrap ? { bootstrap: commaList(opts.bootstrap) } : {}),
        ...(opts.peer ? { peers: commaList(opts.peer) } : {}),
        ...(opts.dhtHost ? { dhtHost: opts.dhtHost } : {}),
        ...(opts.dhtPort ? { dhtPort: opts.dhtPort } : {}),
        ...(opts.tcpLanes !== undefined ? { tcpLanes: opts.tcpLanes } : {}),
        ...(opts.tcpPort ? { tcpPort: opts.tcpPort } : {}),
        ...(opts.maxPeers !== undefined ? { maxPeers: opts.maxPeers } : {}),
        ...(opts.uploadLimit ? { uploadLimit: opts.uploadLimit } : {}),
        ...(opts.peerUploadLimit ? { peerUploadLimit: opts.peerUploadLimit } : {})
      })
      if (opts.json) return printJson(info)
      show(info)
      console.log(`\nOn each other host: osfarmctl fleet init --secret ${info.secret} --bootstrap ${info.bootstrap.join(',') || (info.dht ? `${info.dht.host}:${info.dht.port}` : 'HOST:PORT')}`)
      console.log('and allow it here: osfarmctl fleet allow <its key>')
    }))

  fleet.command('show')
    .description('show this host\'s key and fleet configuration')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const info = await c.call('fleet.show', {})
      if (opts.json) return printJson(info)
      show(info)
    }))

  fleet.command('allow <key>')
    .description('allow a host (by its public key) to connect')
    .option('--json', 'print JSON')
    .action((key, opts) => withClient(ctx, async c => {
      const info = await c.call('fleet.allow', { key })
      if (opts.json) return printJson(info)
      console.log(`allowed ${key}; ${info.allow.length} host(s) on the list`)
    }))

  fleet.command('deny <key>')
    .description('remove a host from the allow-list and disconnect it')
    .option('--json', 'print JSON')
    .action((key, opts) => withClient(ctx, async c => {
      const info = await c.call('fleet.deny', { key })
      if (opts.json) return printJson(info)
      console.log(`denied ${key}; ${info.allow.length} host(s) on the list`)
    }))
}

function show (info: FleetInfo): void {
  printFields([
    ['key', info.publicKey],
    ['fleet', info.configured ? 'configured' : 'none (osfarmctl fleet init)'],
    ['topic', info.topic ?? '-'],
    ['dht', info.dht ? `${info.dht.host}:${info.dht.port}` : '-'],
    ['tcp lanes', info.lanePort ? `port ${info.lanePort}` : 'off'],
    ['max peers', String(info.maxPeers)],
    ['bootstrap', info.bootstrap.join(', ') || '-'],
    ['allowed', info.allow.join('\n           ') || '-'],
    ['direct', info.peers.join(', ') || '-'],
    ['upload limit', info.uploadLimit ? `${info.uploadLimit} B/s` : 'none'],
    ['per peer', info.peerUploadLimit ? `${info.peerUploadLimit} B/s` : 'none']
  ])
}

// host:port,host:port (or key,key) as a list.
function commaList (s: string): string[] {
  return s.split(',').map(x => x.trim()).filter(Boolean)
}
