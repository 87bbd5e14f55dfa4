// The first process of a layer step's sandbox (PID 1 of its PID namespace, in its own mount
// namespace; started by sandbox.ts). Reads the job from stdin, mounts the layer's volume,
// runs the step — commands pivoted into the image (enter-root.ts), file work through the
// in-root resolver — trims the free blocks and reports the inodes whose times must be set,
// as JSON lines on stdout. The step itself runs on an overlay of the layer, and its result is
// written into the layer afterwards by one process in name order (step-overlay.ts). Whatever
// happens, its mounts die with it.

import { BUILD_FAILED, OsfarmError } from '../../../protocol/errors.js'
import { strayTimes, type StrayTimes } from '../mounted-root.js'
import { withStepOverlay } from '../step-overlay.js'
import { bootStep, filesStep, packagesStep, scriptsStep, type StepContext } from '../steps.js'
import { trim } from '../tools/mount.js'
import type { ImageSpec } from '../spec.js'

export interface LayerJob {
  volume: string
  // An empty directory of the builder's: the volume's mount point, the overlay and its upper
  // filesystem are made in it (step-overlay.ts).
  scratch: string
  epoch: number
  step: 'packages' | 'files' | 'scripts' | 'boot'
  spec: ImageSpec
  packages?: string[]
  initramfs?: string[]
  // Image path → daemon-owned host file, for the files step.
  sources?: Array<[string, string]>
  aptCache?: { lists: string, archives: string }
}

const send = (ev: Record<string, unknown>) => { process.stdout.write(JSON.stringify(ev) + '\n') }

async function main (): Promise<void> {
  process.title = 'osfarm-step'
  let text = ''
  process.stdin.setEncoding('utf8')
  for await (const chunk of process.stdin) text += chunk
  const job = JSON.parse(text) as LayerJob
  // The step runs on an overlay; its result is written into the layer in one fixed order.
  const { changes, result: stray } = await withStepOverlay(job.volume, job.scratch, job.epoch, root => runJob(job, root), async layer => {
    // Deleted files' blocks become holes (zeros): never part of the image's content.
    await trim(layer)
    return strayTimes(layer, job.epoch)
  })
  send({ t: 'log', line: `${job.step}: ${changes.removed.length} entries removed, ${changes.written} written into the layer in name order (overlay released after ${changes.releaseMs.toFixed(1)} ms)` })
  send({ t: 'done', value: stray satisfies StrayTimes[] })
}

async function runJob (job: LayerJob, root: string): Promise<void> {
  const ctx: StepContext = {
    root,
    epoch: job.epoch,
    log: line => send({ t: 'log', line }),
    progress: (phase, done, total) => send({ t: 'progress', phase, done, total }),
    ...(job.aptCache ? { aptCache: job.aptCache } : {})
  }
  switch (job.step) {
    case 'packages': await packagesStep(job.spec, job.packages ?? [], job.initramfs, ctx); break
    case 'files': await filesStep(job.spec, new Map(job.sources ?? []), ctx); break
    case 'scripts': await scriptsStep(job.spec, ctx); break
    case 'boot': await bootStep(ctx); break
    default: throw BUILD_FAILED(`unknown step ${String(job.step)}`)
  }
}

main().then(() => process.exit(0), (err: unknown) => {
  const e = err instanceof OsfarmError ? err : BUILD_FAILED((err as Error)?.message ?? String(err))
  send({ t: 'error', code: e.code, message: e.text, details: e.details })
  process.exitCode = 1
})
