// osfarmctl fetch NAME|ROOT [--from KEY] [--name NAME] [--limit RATE] [--peer-timeout S] [--no-wait]

import type { Command } from 'commander'
import type { FetchResult } from '../../protocol/rpc.js'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printJson, shortId } from '../output.js'
import { parseRate, RATE_UNITS } from '../units.js'
import { watchJob } from '../progress.js'
import { hiddenFlag, waitFlags, waits } from '../flags.js'

export function register (program: Command, ctx: CliContext): void {
  const cmd = program.command('fetch <image>')
    .description('fetch an image from the fleet by name or root, reusing every block held locally')
    .option('--from <key>', 'fetch only from this peer (host key)')
    .option('--name <name>', 'local name (default: the advertised name)')
    .option('--limit <rate>', `receive at most this rate (${RATE_UNITS})`, parseRate)
    .option('--peer-timeout <seconds>', 'how long to wait for a peer that holds it (its name, its manifest, its blocks)', Number, 30)
  waitFlags(cmd, true, 'the fetch')
  hiddenFlag(cmd, '--no-wait-job', 'the old name of --no-wait')
  cmd.option('--json', 'print JSON')
    .action((ref, opts) => withClient(ctx, async c => {
      const job = await c.call('image.fetch', { ref, ...(opts.from ? { from: opts.from } : {}), ...(opts.name ? { name: opts.name } : {}), ...(opts.limit ? { limit: opts.limit } : {}), wait: opts.peerTimeout * 1000 })
      if (opts.waitJob === false || !waits(opts, true)) return opts.json ? printJson(job) : console.log(job.id)
      const end = await watchJob(c, job, { bar: !opts.json })
      const r = end.result as FetchResult
      if (opts.json) return printJson(r)
      const i = r.image
      if (r.alreadyPresent || !r.stats) return console.log(`${i.name} is here already: id ${shortId(i.id)}, root ${shortId(i.root)}`)
      const s = r.stats
      const bs = i.blockSize
      const secs = s.elapsedMs / 1000
      console.log(`fetched ${i.name}: id ${shortId(i.id)}, root ${shortId(i.root)}, ${humanBytes(i.size)} in ${secs.toFixed(2)} s`)
      console.log(`  blocks: ${s.blocks} (${s.zeroBlocks} zero), reused in place ${s.inPlace}, copied locally ${s.copiedLocal}, resumed ${s.resumed}, received ${s.received}`)
      console.log(`  received ${humanBytes(s.rawBytes)} of data as ${humanBytes(s.wireBytes)} on the wire (+ ${humanBytes(s.manifestBytes)} manifest), ${humanBytes(s.rate)}/s`)
      console.log(`  reused ${humanBytes((s.inPlace + s.copiedLocal) * bs)} already on this host`)
      for (const [key, p] of Object.entries(s.peers)) console.log(`  from ${shortId(key, 16)} ${p.host}: ${p.blocks} blocks, ${humanBytes(p.wireBytes)} on the wire`)
      if (s.badBlocks) console.log(`  ${s.badBlocks} bad block(s) caught; dropped ${s.droppedPeers.map(k => shortId(k, 16)).join(', ')}`)
    }))
}
