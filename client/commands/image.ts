// osfarmctl image ls|show|import|label|export|rm|verify

import path from 'node:path'
import { Option, type Command } from 'commander'
import type { ImageInfo, ExportResult, JobInfo, VerifyResult } from '../../protocol/rpc.js'
import { SOURCE_EMPTY, VERIFY_FAILED } from '../../protocol/errors.js'
import { download, fileTarget, openLocalSource, stdoutTarget, upload } from '../streams.js'
import { parseSize, SIZE_UNITS } from '../units.js'
import { withClient, type CliContext } from '../context.js'
import { humanBytes, printFields, printJson, printTable, shortId } from '../output.js'
import { labelList, waits } from '../flags.js'
import { watchJob } from '../progress.js'

export function register (program: Command, ctx: CliContext): void {
  const image = program.command('image').description('manage images')

  image.command('ls').alias('list')
    .description('list images')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const images = await c.call('image.list', {})
      if (opts.json) return printJson(images)
      printTable(['ID', 'NAME', 'VERSION', 'SIZE', 'DATA', 'ROOT', 'ORIGIN', 'LAYERS', 'LABELS', 'CREATED'], images.map(i => [
        shortId(i.id), i.name, i.version ?? '-', humanBytes(i.size), humanBytes(dataBytes(i)), shortId(i.root), i.origin,
        i.layers.length ? i.layers.map(l => shortId(l, 8)).join('>') : '-', i.labels?.join(',') || '-', i.createdAt.replace(/\.\d+Z$/, 'Z')
      ]))
    }))

  image.command('outdated')
    .description('the newest version of every built image against its repositories now (exit 1 if any is behind)')
    .option('--json', 'print JSON')
    .action(opts => withClient(ctx, async c => {
      const list = await c.call('image.outdated', {})
      for (const o of list) for (const w of o.warnings) console.error(`warning: ${o.image.name}: ${w}`)
      if (list.some(o => o.outdated)) process.exitCode = 1
      if (opts.json) return printJson(list)
      printTable(['NAME', 'VERSION', 'STATE', 'CHANGED', 'REBUILD'], list.map(o => [
        o.image.name, o.image.version ?? '-', o.outdated ? 'outdated' : 'up to date',
        o.changed.map(ch => `${ch.uri} ${ch.suite}`).join(', ') || '-', o.rebuild.join('>') || '-'
      ]))
    }))

  image.command('show <id>')
    .description('show one image (by id, name, or id/root prefix)')
    .option('--json', 'print JSON')
    .action((ref, opts) => withClient(ctx, async c => {
      const i = await c.call('image.get', { id: ref })
      if (opts.json) return printJson(i)
      printFields([
        ['id', i.id], ['name', i.name], ['version', i.version !== undefined ? `${i.version} (${i.name}@${i.version})` : '-'], ['root', i.root], ['size', `${humanBytes(i.size)} (${i.size} bytes)`],
        ['data', `${humanBytes(dataBytes(i))} in ${i.blocks - i.zeroBlocks} of ${i.blocks} blocks of ${i.blockSize} bytes`],
        ['origin', i.origin], ['layers', i.layers.join(' > ') || '-'], ['volume', i.volume], ['labels', i.labels?.join(', ') || '-'], ['created', i.createdAt]
      ])
    }))

  image.command('import <file>')
    .description('import a raw image file or block device (- reads stdin); read with your own rights')
    .requiredOption('-n, --name <name>', 'image name')
    .option('-l, --label <key=value>', 'a label, carried in the image\'s advert (seed policies match them); repeatable', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--size <bytes>', `the image size, for a pipe (${SIZE_UNITS})`, parseSize)
    .option('--wait', 'wait for the job, with progress (the default)')
    .option('--no-wait', 'return the job once the bytes are in (indexing goes on)')
    .option('--json', 'print JSON')
    .action((file, opts) => withClient(ctx, async c => {
      const labels = opts.label.length ? { labels: labelList(opts.label) } : {}
      let job: JobInfo
      if (c.rights === 'admin' && file !== '-') {
        // Root's fast path: osfarmd opens the file itself.
        job = await c.call('image.import', { path: path.resolve(file), name: opts.name, ...labels })
      } else {
        const src = await openLocalSource(file, { field: 'FILE', kind: 'image', ...(opts.size !== undefined ? { size: opts.size } : {}) })
        try {
          if (src.size === 0) throw SOURCE_EMPTY(`${src.name} is empty`)
          const r = await c.call('image.upload', { name: opts.name, size: src.size, ...labels })
          job = r.job
          await upload(c.path, r.stream, src)
        } finally {
          await src.close()
        }
      }
      if (!waits(opts, true)) return opts.json ? printJson(job) : console.log(job.id)
      const end = await watchJob(c, job, { bar: !opts.json })
      const img = end.result as ImageInfo
      if (opts.json) return printJson(img)
      console.log(`imported ${img.name}: id ${shortId(img.id)}, root ${shortId(img.root)}, ${humanBytes(img.size)} (${humanBytes(dataBytes(img))} data)`)
    }))

  image.command('label <id> [labels...]')
    .description('set labels (key=value; a key replaces that key\'s labels) on an image this host built; the fleet hears the new labels')
    .option('--rm <key>', 'remove the labels of a key (or one key=value); repeatable', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--json', 'print JSON')
    .action((ref, labels: string[], opts) => withClient(ctx, async c => {
      const i = await c.call('image.label', { id: ref, ...(labels.length ? { set: labelList(labels) } : {}), ...(opts.rm.length ? { remove: labelList(opts.rm) } : {}) })
      if (opts.json) return printJson(i)
      console.log(`${i.name}: ${i.labels?.join(', ') || '(no labels)'}`)
    }))

  image.command('export <id>')
    .description('write an image to a file (- writes stdout), with your own rights; raw stays sparse')
    .requiredOption('-o, --output <file>', 'target file, or - for stdout')
    .addOption(new Option('--format <format>', 'output format').choices(['raw', 'qcow2']).default('raw'))
    .option('--wait', 'wait for the job, with progress (the default)')
    .option('--no-wait', 'return the job at once (root, to a file: osfarmd writes it)')
    .option('--json', 'print JSON')
    .action((ref, opts) => withClient(ctx, async c => {
      const toStdout = opts.output === '-'
      if (c.rights === 'admin' && !toStdout) {
        // Root's fast path: osfarmd writes the file itself.
        const job = await c.call('image.export', { id: ref, path: path.resolve(opts.output), format: opts.format })
        if (!waits(opts, true)) return opts.json ? printJson(job) : console.log(job.id)
        const end = await watchJob(c, job, { bar: !opts.json })
        const r = end.result as ExportResult
        if (opts.json) return printJson(r)
        return console.log(`exported ${ref} to ${r.path} (${r.format}, ${humanBytes(r.bytes)})`)
      }
      // Claimed before the download starts: an unwritable target fails at once.
      const target = toStdout ? stdoutTarget() : await fileTarget(opts.output)
      let bytes: number
      try {
        const r = await c.call('image.download', { id: ref, format: opts.format })
        bytes = await download(c.path, r.stream, target)
        await watchJob(c, r.job, { bar: false })
      } catch (err) {
        await target.abort()
        throw err
      }
      const result: ExportResult = { id: ref, path: target.path, format: opts.format, bytes }
      if (toStdout) return
      if (opts.json) return printJson(result)
      console.log(`exported ${ref} to ${target.path} (${opts.format}, ${humanBytes(bytes)})`)
    }))

  image.command('rm <id>').alias('remove')
    .description('remove an image')
    .option('--json', 'print JSON')
    .action((ref, opts) => withClient(ctx, async c => {
      const r = await c.call('image.remove', { id: ref })
      if (opts.json) return printJson(r)
      console.log(`removed ${r.id}`)
    }))

  image.command('verify <id>')
    .description('re-hash an image and compare it with its manifest')
    .option('--json', 'print JSON')
    .action((ref, opts) => withClient(ctx, async c => {
      const job = await c.call('image.verify', { id: ref })
      const end = await watchJob(c, job, { bar: !opts.json })
      const r = end.result as VerifyResult
      if (opts.json) printJson(r)
      else console.log(r.ok ? `ok: ${r.blocks} blocks match` : `FAILED: ${r.badBlocks.length} bad blocks (first: ${r.badBlocks.slice(0, 10).join(', ')})`)
      if (!r.ok) throw VERIFY_FAILED(`${r.badBlocks.length} blocks do not match the manifest`)
    }))
}

function dataBytes (i: ImageInfo): number {
  return Math.min(i.size, (i.blocks - i.zeroBlocks) * i.blockSize)
}
