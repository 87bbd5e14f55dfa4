// osfarmctl prestage start|sync|ls|show|cancel

import fs from 'node:fs'
import path from 'node:path'
import type { Command } from 'commander'
import type { PrestageInfo } from '../../protocol/rpc.js'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printFields, printJson, printTable, shortId } from '../output.js'
import { waits } from '../flags.js'
import { watchJob } from '../progress.js'

export function register (program: Command, ctx: CliContext): void {
  const pre = program.command('prestage').description('copy a VM\'s disk to the host it will migrate to, ahead of the cut-over')

  pre.command('start <disk>')
    .description('take a consistent point of DISK (a raw file, an LV, a store volume or an image) and stage it on the host KEY')
    .requiredOption('--to <key>', 'the target host\'s key')
    .option('--base <image>', 'the image the disk was made from (its blocks are indexed from its manifest)')
    .option('--wait', 'wait for the job, with progress (the default)')
    .option('--no-wait', 'return the job at once')
    .option('--json', 'print JSON')
    .action((disk, opts) => withClient(ctx, async c => {
      // A path as given, a relative path made absolute, "vg/lv" as /dev/vg/lv; else an image or volume.
      const abs = disk.startsWith('/') ? disk : fs.existsSync(disk) ? path.resolve(disk) : fs.existsSync(`/dev/${disk}`) ? `/dev/${disk}` : disk
      const job = await c.call('prestage.start', { disk: abs, to: opts.to, ...(opts.base ? { base: opts.base } : {}) })
      if (!waits(opts, true)) return opts.json ? printJson(job) : console.log(`prestage ${job.target} (job ${job.id})`)
      const end = await watchJob(c, job, { bar: !opts.json })
      const info = end.result as PrestageInfo
      if (opts.json) return printJson(info)
      summary('staged', info)
    }))

  pre.command('sync <id>')
    .description('take the next point (only what changed since the last is indexed) and have the target fetch the delta')
    .option('--wait', 'wait for the job, with progress (the default)')
    .option('--no-wait', 'return the job at once')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const job = await c.call('prestage.sync', { id })
      if (!waits(opts, true)) return opts.json ? printJson(job) : console.log(job.id)
      const end = await watchJob(c, job, { bar: !opts.json })
      const info = end.result as PrestageInfo
      if (opts.json) return printJson(info)
      summary('synced', info)
    }))

  pre.command('ls').alias('list')
    .description('prestages this host is the source or the target of')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const list = await c.call('prestage.list', {})
      if (opts.json) return printJson(list)
      printTable(['ID', 'ROLE', 'STATE', 'DISK', 'PEER', 'SIZE', 'POINT', 'ROOT'], list.map(p => {
        const last = p.points[p.points.length - 1]
        return [p.id, p.role, p.state, p.disk, `${shortId(p.peer, 16)} ${p.peerHost}`.trim(), humanBytes(p.size), last ? String(last.seq) : '-', last ? shortId(last.root) : '-']
      }))
    }))

  pre.command('show <id>')
    .description('one prestage: its points, the target\'s last report, the copy\'s path on the target')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const p = await c.call('prestage.get', { id })
      if (opts.json) return printJson(p)
      const last = p.points[p.points.length - 1]
      const t = p.target
      printFields([
        ['id', p.id], ['role', p.role], ['state', p.state], ['disk', p.disk], ['size', humanBytes(p.size)],
        [p.role === 'source' ? 'target' : 'source', `${p.peer} ${p.peerHost}`.trim()],
        ['base image', p.base ? `${p.base.name} (${shortId(p.base.root)})` : '-'],
        ['point', last ? `${last.seq}: root ${last.root}, ${last.capture}, indexed by ${last.index} (${last.hashedBlocks} blocks hashed, ${last.changedBlocks} changed, ${last.indexMs} ms)` : '-'],
        ['target', t ? `point ${t.seq} ${t.state}${t.stats ? `: received ${t.stats.received} blocks, ${humanBytes(t.stats.wireBytes + t.stats.manifestBytes)} on the wire, reused ${t.stats.inPlace + t.stats.copiedLocal} in ${(t.stats.elapsedMs / 1000).toFixed(2)} s` : ''}` : undefined],
        ['copy', p.path ? `${p.path} (volume ${p.volume}, read-only: clone it for the VM)` : undefined],
        ['created', p.createdAt], ['error', p.error]
      ])
    }))

  pre.command('cancel <id>')
    .description('stop a prestage and drop its points, on both hosts')
    .option('--json', 'print JSON')
    .action((id, opts) => withClient(ctx, async c => {
      const p = await c.call('prestage.cancel', { id })
      if (opts.json) return printJson(p)
      console.log(`prestage ${p.id} ${p.state}`)
    }))
}

function summary (verb: string, p: PrestageInfo): void {
  const last = p.points[p.points.length - 1]!
  const s = p.target?.stats
  console.log(`${verb} ${p.disk} as prestage ${p.id}, point ${last.seq} on ${p.peerHost || shortId(p.peer, 16)}: root ${shortId(last.root)}`)
  console.log(`  source: ${last.capture} point, indexed by ${last.index}: ${last.hashedBlocks} blocks hashed, ${last.changedBlocks} changed, ${(last.indexMs / 1000).toFixed(2)} s`)
  if (s) console.log(`  target: received ${s.received} blocks (${humanBytes(s.rawBytes)}) as ${humanBytes(s.wireBytes)} + ${humanBytes(s.manifestBytes)} manifest on the wire; reused ${s.inPlace} in place, ${s.copiedLocal} local; ${(s.elapsedMs / 1000).toFixed(2)} s`)
}
