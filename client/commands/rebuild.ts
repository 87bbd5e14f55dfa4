// osfarmctl rebuild add|ls|rm: rebuild policies, osfarmd building a spec again on its own (every
// so often and/or when a repository it reads changed), in the background.

import fs from 'node:fs/promises'
import path from 'node:path'
import type { Command } from 'commander'
import type { RebuildPolicyParams } from '../../protocol/rpc.js'
import { BAD_PARAMS } from '../../protocol/errors.js'
import { withClient, type CliContext } from '../context.js'
import { printJson, printTable } from '../output.js'
import { uploadSources } from './build.js'
import { labelList } from '../flags.js'

export function register (program: Command, ctx: CliContext): void {
  const rebuild = program.command('rebuild').description('rebuild policies: images osfarmd keeps up to date with their repositories')

  rebuild.command('add <spec>')
    .description('build SPEC again in the background: --every INTERVAL and/or --on-change (a repository it reads changed)')
    .option('--every <interval>', 'e.g. 6h, 30m, 1d', parseInterval)
    .option('--on-change', 'when a repository the image reads has changed (the default without --every)')
    .option('-n, --name <name>', 'image name (default: the spec\'s name)')
    .option('-l, --label <key=value>', 'a label for the built versions; repeatable', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--json', 'print JSON')
    .action((spec: string, opts) => withClient(ctx, async c => {
      const params: RebuildPolicyParams = { spec: await fs.readFile(spec, 'utf8'), baseDir: path.dirname(path.resolve(spec)) }
      if (spec.endsWith('.xml')) params.format = 'xml'
      else if (spec.endsWith('.json')) params.format = 'json'
      if (opts.name) params.name = opts.name
      if (opts.label.length) params.labels = labelList(opts.label)
      if (opts.every !== undefined) params.everySeconds = opts.every
      if (opts.onChange) params.onChange = true
      // The spec's files are uploaded once and kept by osfarmd for the policy's life.
      if (c.rights !== 'admin') params.sources = await uploadSources(c, params)
      const p = await c.call('rebuild.add', params)
      if (opts.json) return printJson(p)
      console.log(`added rebuild policy ${p.id} for ${p.name}: ${describe(p.everySeconds, p.onChange)}`)
    }))

  rebuild.command('ls').alias('list')
    .description('list the rebuild policies')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const list = await c.call('rebuild.list', {})
      if (opts.json) return printJson(list)
      printTable(['ID', 'NAME', 'WHEN', 'RIGHTS', 'LAST RUN', 'RESULT', 'VERSION', 'NEXT'], list.map(p => [
        p.id, p.name, describe(p.everySeconds, p.onChange), p.rights, p.lastRun ?? '-', p.running ? `running (job ${p.running})` : p.lastResult ?? '-', p.lastVersion ?? '-', p.nextRun ?? (p.onChange ? 'on change' : '-')
      ]))
    }))

  rebuild.command('rm <id>').alias('remove')
    .description('remove a rebuild policy (the versions it built stay)')
    .action(id => withClient(ctx, async c => {
      await c.call('rebuild.remove', { id })
      console.log(`removed rebuild policy ${id}`)
    }))
}

function describe (every: number | null, onChange: boolean): string {
  return [every !== null ? `every ${formatInterval(every)}` : '', onChange ? 'on change' : ''].filter(Boolean).join(' and ')
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }

export function parseInterval (v: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhd])$/.exec(v.trim())
  if (!m) throw BAD_PARAMS(`--every: ${JSON.stringify(v)} is not an interval such as 30m, 6h or 1d`)
  return Math.round(Number(m[1]) * UNITS[m[2]!]!)
}

function formatInterval (s: number): string {
  for (const [u, n] of [['d', 86400], ['h', 3600], ['m', 60]] as const) if (s % n === 0) return `${s / n}${u}`
  return `${s}s`
}
