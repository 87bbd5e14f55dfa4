// osfarmctl build SPEC [--wait] [--label K=V] [--snapshot WHEN] [--check]: build an image from an XML or JSON spec. The spec's text is
// sent, and the files it names (files[].source, rootfs, relative to the spec's directory) are
// read here with the caller's own rights and uploaded; only root lets osfarmd read them itself.

import fs from 'node:fs/promises'
import path from 'node:path'
import { Option, type Command } from 'commander'
import type { BuildCheckResult, BuildParams, BuildResultInfo, SourceInfo } from '../../protocol/rpc.js'
import type { OsfarmClient } from '../client.js'
import { openLocalSource, upload } from '../streams.js'
import { withClient, type CliContext } from '../context.js'
import { printJson, printTable, shortId } from '../output.js'
import { watchJob } from '../progress.js'
import { labelList, waits } from '../flags.js'

export function register (program: Command, ctx: CliContext): void {
  program.command('build <spec>')
    .description('build an image from a spec file (XML or JSON; - reads stdin)')
    .option('-n, --name <name>', 'image name (default: the spec\'s name)')
    .option('-l, --label <key=value>', 'a label, carried in the image\'s advert (seed policies match them); replaces the spec\'s labels with its key; repeatable', (v: string, all: string[]) => [...all, v], [] as string[])
    .addOption(new Option('--format <format>', 'spec format (default: from the file name or content)').choices(['xml', 'json']))
    .option('-w, --wait', 'wait for the build, with progress, and print its layers')
    .option('--no-wait', 'return the job at once (the default)')
    .option('--logs', 'with --wait: print the build log')
    .option('--snapshot <when>', 'pin the repositories: "offline" (the newest state this host saw, no network) or a date/time (ISO 8601) whose states this host saw')
    .option('--check', 'do not build: tell whether the image is behind its repositories and which layers a build would redo (exit 1 when it is)')
    .option('--json', 'print JSON')
    .action((spec: string, opts) => withClient(ctx, async c => {
      const params: BuildParams = spec === '-'
        ? { spec: await readStdin(), baseDir: process.cwd() }
        : { spec: await fs.readFile(spec, 'utf8'), baseDir: path.dirname(path.resolve(spec)) }
      const format = opts.format ?? (spec.endsWith('.xml') ? 'xml' : spec.endsWith('.json') ? 'json' : undefined)
      if (format) params.format = format
      if (opts.name) params.name = opts.name
      if (opts.label.length) params.labels = labelList(opts.label)
      if (opts.snapshot) params.snapshot = opts.snapshot
      if (c.rights !== 'admin') params.sources = await uploadSources(c, params)
      if (opts.check) return printCheck(await c.call('image.check', params), Boolean(opts.json))
      const job = await c.call('image.build', params)
      if (!waits(opts, false)) return opts.json ? printJson(job) : console.log(job.id)
      const end = await watchJob(c, job, { bar: !opts.json, logs: Boolean(opts.logs) })
      const r = end.result as BuildResultInfo
      for (const w of r.warnings ?? []) console.error(`warning: ${w}`)
      if (opts.json) return printJson(r)
      console.log(`${r.cached ? 'cached' : 'built'} ${r.image.name}${r.image.version !== undefined ? ` version ${r.image.version}` : ''}: image ${shortId(r.image.id)}, key ${shortId(r.key)}, root ${shortId(r.image.root)}`)
      printTable(['#', 'STEP', 'LAYER', 'CACHED', 'SECONDS'], r.layers.map((l, i) => [
        i + 1, l.step, shortId(l.key), l.cached ? 'cached' : '-', l.cached ? '-' : l.seconds.toFixed(1)
      ]))
    }))
}

function printCheck (r: BuildCheckResult, json: boolean): void {
  for (const w of r.warnings) console.error(`warning: ${w}`)
  if (json) printJson(r)
  else {
    const state = r.upToDate ? 'up to date' : r.newest ? 'outdated' : 'not built yet'
    console.log(`${r.name}: ${state}${r.newest ? ` (newest version ${r.newest.version ?? '-'}, ${r.newest.createdAt})` : ''}`)
    for (const c of r.changed) console.log(`  changed: ${c.uri} ${c.suite} ${c.was.slice(0, 12) || '-'} → ${c.now.slice(0, 12)}`)
    printTable(['#', 'STEP', 'LAYER', 'BUILD'], r.layers.map(l => [l.index + 1, l.step, shortId(l.key), l.cached ? 'cached' : 'rebuild']))
  }
  if (!r.upToDate) process.exitCode = 1
}

// Uploads each host file the spec names (once per path); path → its BLAKE3, for image.build.
export async function uploadSources (c: OsfarmClient, params: { spec?: string, format?: 'xml' | 'json', baseDir?: string }): Promise<Record<string, string>> {
  const named = await c.call('spec.sources', { spec: params.spec!, ...(params.format ? { format: params.format } : {}), ...(params.baseDir ? { baseDir: params.baseDir } : {}) })
  const out: Record<string, string> = {}
  for (const { field, path: file } of named) {
    if (out[file] !== undefined) continue
    const src = await openLocalSource(file, { field, kind: 'file' })
    try {
      const { stream } = await c.call('source.upload', { size: src.size })
      out[file] = (await upload(c.path, stream, src) as SourceInfo).blake3
    } finally {
      await src.close()
    }
  }
  return out
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}
