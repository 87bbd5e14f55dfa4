// osfarmctl seed add|ls|rm|status|cap

import type { Command } from 'commander'
import type { SeedPolicy, SeedStatus } from '../../protocol/rpc.js'
import { BAD_PARAMS } from '../../protocol/errors.js'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printJson, printTable, shortId } from '../output.js'
import { parseRate, parseSize, RATE_UNITS, SIZE_UNITS } from '../units.js'

export function register (program: Command, ctx: CliContext): void {
  const seed = program.command('seed').description('seed policies: images this host (or the whole fleet) holds before anyone asks')

  seed.command('add <match>')
    .description('hold the newest images whose advertised name matches MATCH (a glob: * ?)')
    .option('-l, --label <key=glob>', 'and that carry a matching label')
    .option('-k, --keep <n>', 'newest versions to hold', parseCount, 1)
    .option('--max-size <size>', `never images larger than this (${SIZE_UNITS})`, parseSize)
    .option('-p, --priority <n>', 'higher goes first among seed fetches', Number, 0)
    .option('--upload-limit <rate>', `serve seeding requests for the images it wants at most this fast (${RATE_UNITS})`, parseRate)
    .option('--download-limit <rate>', `fetch at most this fast (${RATE_UNITS})`, parseRate)
    .option('--fleet', 'a fleet-wide default: every host of the fleet applies it')
    .option('--json', 'print JSON')
    .action((match, opts) => withClient(ctx, async c => {
      const p = await c.call('seed.add', {
        match,
        ...(opts.label ? { label: opts.label } : {}),
        keep: opts.keep,
        ...(opts.maxSize ? { maxSize: opts.maxSize } : {}),
        priority: opts.priority,
        ...(opts.uploadLimit ? { uploadLimit: opts.uploadLimit } : {}),
        ...(opts.downloadLimit ? { downloadLimit: opts.downloadLimit } : {}),
        ...(opts.fleet ? { fleet: true } : {})
      })
      if (opts.json) return printJson(p)
      console.log(`added seed policy ${p.id}${p.scope === 'fleet' ? ' (fleet-wide)' : ''}: ${describe(p)}`)
    }))

  seed.command('ls').alias('list')
    .description('list the seed policies this host applies (its own and the fleet\'s)')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const list = await c.call('seed.list', {})
      if (opts.json) return printJson(list)
      printTable(['ID', 'SCOPE', 'MATCH', 'LABEL', 'KEEP', 'MAX SIZE', 'PRIO', 'UP LIMIT', 'DOWN LIMIT', 'UPLOADED'], list.map(p => [
        p.id, p.scope, p.match, p.label ?? '-', p.keep, p.maxSize ? humanBytes(p.maxSize) : '-', p.priority,
        p.uploadLimit ? `${humanBytes(p.uploadLimit)}/s` : '-', p.downloadLimit ? `${humanBytes(p.downloadLimit)}/s` : '-',
        humanBytes(p.uploaded ?? 0)
      ]))
    }))

  seed.command('rm <id>').alias('remove')
    .description('remove a policy; images only it wanted are released (a fleet policy: on every host)')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const r = await c.call('seed.remove', { id })
      if (opts.json) return printJson(r)
      console.log(`removed seed policy ${r.id}`)
    }))

  seed.command('status')
    .description('per image: what this host does, which hosts hold it, and the fleet-wide roll-out')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const st = await c.call('seed.status', {})
      if (opts.json) return printJson(st)
      show(st)
    }))

  seed.command('cap <size>')
    .description('cap the data seeding may hold on this host (0: no cap); the lowest priority, oldest go first')
    .option('--json', 'print JSON')
    .action((size, opts) => withClient(ctx, async c => {
      const r = await c.call('seed.cap', { bytes: parseSize(size) })
      if (opts.json) return printJson(r)
      console.log(r.cap ? `seeding holds at most ${humanBytes(r.cap)} here` : 'no seed cap')
    }))
}

function describe (p: SeedPolicy): string {
  return [`name ${p.match}`, p.label ? `label ${p.label}` : '', `newest ${p.keep}`, p.maxSize ? `at most ${humanBytes(p.maxSize)}` : '', p.priority ? `priority ${p.priority}` : '']
    .filter(Boolean).join(', ')
}

function show (st: SeedStatus): void {
  console.log(`${st.policies.length} polic${st.policies.length === 1 ? 'y' : 'ies'}; seeding holds ${humanBytes(st.heldBytes)}${st.cap ? ` of ${humanBytes(st.cap)}` : ''} here${st.paused ? '; waiting for a user\'s job' : ''}`)
  if (!st.images.length) return
  printTable(['NAME', 'ROOT', 'SIZE', 'LABELS', 'CREATED', 'HERE', 'HOLDERS', 'ROLL-OUT'], st.images.map(i => [
    i.name, shortId(i.root), humanBytes(i.size), i.labels.join(',') || '-', i.created?.replace(/\.\d+Z$/, 'Z') ?? '-',
    i.local === 'fetching' ? `fetching ${Math.round(i.progress * 100)}%` : i.reason ? `${i.local} (${i.reason})` : i.local,
    i.holders.map(h => h.complete ? h.host : `${h.host} ${Math.round(100 * (h.blocks ?? 0) / (h.total ?? 1))}%`).join(', ') || '-',
    `${i.fleet.complete}/${i.fleet.hosts} hosts, ${Math.round(i.fleet.progress * 100)}%`
  ]))
}

function parseCount (s: string): number {
  const n = Number(s)
  if (!Number.isInteger(n) || n < 1) throw BAD_PARAMS(`expected a count of 1 or more, got ${JSON.stringify(s)}`)
  return n
}
