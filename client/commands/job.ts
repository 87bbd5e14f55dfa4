// osfarmctl job ls|show|watch|cancel

import type { Command } from 'commander'
import type { JobInfo } from '../../protocol/rpc.js'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printFields, printJson, printTable } from '../output.js'
import { watchJob } from '../progress.js'

export function register (program: Command, ctx: CliContext): void {
  const job = program.command('job').description('follow and control long-running work')

  job.command('ls').alias('list')
    .description('list jobs')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const jobs = await c.call('job.list', {})
      if (opts.json) return printJson(jobs)
      printTable(['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'CREATED'], jobs.map(j => [
        j.id, j.kind, j.target, j.state, progressText(j), j.createdAt.replace(/\.\d+Z$/, 'Z')
      ]))
    }))

  job.command('show <id>')
    .description('show one job')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const j = await c.call('job.get', { id })
      if (opts.json) return printJson(j)
      printFields([
        ['id', j.id], ['kind', j.kind], ['target', j.target], ['state', j.state], ['progress', progressText(j)],
        ['created', j.createdAt], ['finished', j.finishedAt], ['error', j.error?.message],
        ['result', j.result === undefined ? undefined : JSON.stringify(j.result)]
      ])
    }))

  job.command('watch <id>')
    .description('follow a job until it ends, with its log')
    .option('--json', 'print the final state as JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const j = await c.call('job.get', { id })
      const end = await watchJob(c, j, { bar: !opts.json, logs: true })
      if (opts.json) printJson(end)
      else console.log(`${end.id} ${end.state}`)
    }))

  job.command('cancel <id>')
    .description('cancel a running job')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const j = await c.call('job.cancel', { id })
      if (opts.json) return printJson(j)
      console.log(`${j.id} ${j.state === 'running' ? 'cancelling' : j.state}`)
    }))
}

function progressText (j: JobInfo): string {
  const p = j.progress
  if (p.total === 0) return p.phase
  const pct = Math.floor((p.done / p.total) * 100)
  return `${p.phase} ${pct}% (${p.unit === 'bytes' ? `${humanBytes(p.done)}/${humanBytes(p.total)}` : `${p.done}/${p.total}`})`
}
