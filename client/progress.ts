// Watches a job to its end, drawing its progress with cli-progress on a terminal (plain lines
// otherwise), and turns a failed or cancelled job into the daemon's error.

import cliProgress from 'cli-progress'
import { OsfarmError, isErrorCode } from '../protocol/errors.js'
import type { JobInfo } from '../protocol/rpc.js'
import type { OsfarmClient } from './client.js'
import { humanBytes } from './output.js'

export interface WatchOptions {
  // Draw a progress bar (on a terminal, unless --json).
  bar: boolean
  // Print the job's log lines to stderr.
  logs?: boolean
}

export async function watchJob (client: OsfarmClient, job: JobInfo, options: WatchOptions): Promise<JobInfo> {
  const bar = options.bar && process.stderr.isTTY
    ? new cliProgress.SingleBar({
      format: '{phase} [{bar}] {percentage}% {value_h}/{total_h} {rate}',
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr
    }, cliProgress.Presets.shades_classic)
    : undefined
  let started = false
  const t0 = Date.now()
  const show = (j: JobInfo) => {
    if (!bar) return
    const p = j.progress
    const payload = {
      phase: p.phase.padEnd(8),
      value_h: p.unit === 'bytes' ? humanBytes(p.done) : String(p.done),
      total_h: p.unit === 'bytes' ? humanBytes(p.total) : String(p.total),
      rate: p.unit === 'bytes' && Date.now() > t0 ? `${humanBytes(p.done / ((Date.now() - t0) / 1000))}/s` : ''
    }
    if (!started) { bar.start(Math.max(1, p.total), p.done, payload); started = true }
    bar.setTotal(Math.max(1, p.total))
    bar.update(p.done, payload)
  }
  client.onNotification((method, params) => {
    if (method === 'job.progress') show(params as JobInfo)
    else if (method === 'job.log' && options.logs) process.stderr.write(`${(params as { line: string }).line}\n`)
  })
  let end: JobInfo
  try {
    end = await client.call('job.watch', { id: job.id })
  } finally {
    bar?.stop()
  }
  if (end.state === 'done') return end
  const code = isErrorCode(end.error?.code) ? end.error!.code : 'JOB_FAILED'
  throw new OsfarmError(code, (end.error?.message ?? `job ${end.state}`).replace(/^[A-Z_]+: /, ''), { job: end.id })
}
