// A job's progress as a bar with its phase, amounts in the job's unit and, for byte counts, the
// rate measured over the last few seconds of updates.

import { Group, Progress, Text } from '@mantine/core'
import type { JobInfo } from '../../../protocol/rpc.ts'
import { bytes, rate } from '../format.ts'

const STATE_COLOR: Record<JobInfo['state'], string> = { running: 'blue', done: 'teal', failed: 'red', cancelled: 'gray' }

export function stateColor (state: JobInfo['state']): string {
  return STATE_COLOR[state]
}

export function percent (job: JobInfo): number {
  if (job.state === 'done') return 100
  const { done, total } = job.progress
  return total > 0 ? Math.min(100, (done / total) * 100) : 0
}

// A step counted as 0 of 1 (a build layer's phase) says nothing a bar could show.
function indeterminate (job: JobInfo): boolean {
  return job.state === 'running' && job.progress.unit === 'steps' && job.progress.total <= 1
}

function amount (n: number, unit: JobInfo['progress']['unit']): string {
  return unit === 'bytes' ? bytes(n) : String(n)
}

export function JobProgress ({ job, bytesPerSecond, size = 'md' }: { job: JobInfo, bytesPerSecond?: number, size?: 'sm' | 'md' | 'lg' }) {
  const { phase, done, total, unit } = job.progress
  const busy = indeterminate(job)
  const counted = total > 0 && !busy && (job.state === 'running' || unit === 'bytes')
  return (
    <div data-testid={`progress-${job.id}`}>
      <Progress value={busy ? 100 : percent(job)} color={stateColor(job.state)} animated={job.state === 'running'} striped={job.state === 'running'}
        size={size} opacity={busy ? 0.45 : 1} transitionDuration={200} />
      <Group justify='space-between' gap='xs' mt={2}>
        <Text size='xs' c='dimmed'>{job.state === 'running' ? phase : job.state}</Text>
        <Text size='xs' c='dimmed'>
          {counted ? `${amount(done, unit)} / ${amount(total, unit)}${unit === 'steps' ? ' steps' : ''}` : ''}
          {bytesPerSecond !== undefined && job.state === 'running' ? ` · ${rate(bytesPerSecond)}` : ''}
        </Text>
      </Group>
    </div>
  )
}

// Rate of a byte counter from its recent samples.
export class RateMeter {
  #samples: Array<[number, number]> = []
  readonly #windowMs: number

  constructor (windowMs = 3000) {
    this.#windowMs = windowMs
  }

  add (done: number, at = Date.now()): number | undefined {
    this.#samples.push([at, done])
    while (this.#samples.length > 2 && at - this.#samples[0]![0] > this.#windowMs) this.#samples.shift()
    const [t0, d0] = this.#samples[0]!
    return at > t0 ? ((done - d0) * 1000) / (at - t0) : undefined
  }
}
