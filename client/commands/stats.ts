// osfarmctl stats: the daemon's counters and gauges (the same figures /metrics serves).

import type { Command } from 'commander'
import { withClient, type CliContext } from '../context.js'
import { printJson, printTable } from '../output.js'

export function register (program: Command, ctx: CliContext): void {
  program.command('stats')
    .description('show counters: builds, cache hits, bytes reused/received/served, store usage')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const families = await c.call('daemon.stats', {})
      if (opts.json) return printJson(families)
      const rows: string[][] = []
      for (const f of families) {
        for (const s of f.samples) {
          const labels = Object.entries(s.labels).map(([k, v]) => `${k}=${v.length > 16 ? v.slice(0, 12) + '…' : v}`).join(' ')
          rows.push([f.name, labels, String(s.value)])
        }
      }
      printTable(['METRIC', 'LABELS', 'VALUE'], rows)
    }))
}
