// osfarmctl status: is the daemon up, and what does it hold.

import type { Command } from 'commander'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printFields, printJson } from '../output.js'

export function register (program: Command, ctx: CliContext): void {
  program.command('status')
    .description('show the daemon\'s state')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const s = await c.call('daemon.status', {})
      if (opts.json) return printJson(s)
      printFields([
        ['osfarmd', `${s.version} (pid ${s.pid}, up ${s.uptimeSeconds} s)`],
        ['socket', s.socket],
        ['data', s.dataDir],
        ['store', `${s.store.backend}, ${s.store.volumes} volumes, ${humanBytes(s.store.bytesUsed)} used, ${humanBytes(s.store.bytesFree)} free`],
        ['images', s.images],
        ['jobs', `${s.jobs.running} running, ${s.jobs.total} known`]
      ])
    }))
}
