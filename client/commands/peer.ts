// osfarmctl peer ls

import type { Command } from 'commander'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printJson, printTable, shortId } from '../output.js'

export function register (program: Command, ctx: CliContext): void {
  const peer = program.command('peer').description('connected fleet peers')
  peer.command('ls').alias('list')
    .description('list connected peers: key, address, TCP lane, images advertised, bytes in/out, rate')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const peers = await c.call('peer.list', {})
      if (opts.json) return printJson(peers)
      printTable(['KEY', 'HOST', 'ADDRESS', 'LANE', 'IMAGES', 'PARTIAL', 'IN', 'OUT', 'RATE IN'], peers.map(p => [
        shortId(p.key, 16), p.host, p.address || '-', p.lane ? `tcp ${p.lane.address}` : '-', p.images, p.partial, humanBytes(p.bytesIn), humanBytes(p.bytesOut), `${humanBytes(p.rateIn)}/s`
      ]))
    }))
}
