// The source's side of a point: waiting for the target's reports (StageStatus) on it, with a
// deadline that each report moves on, until the target says done, failed or cancelled.

import { JOB_CANCELLED } from '../../protocol/errors.js'
import type { PrestageTargetReport } from '../../protocol/rpc.js'

export const REPORT_TIMEOUT_MS = 5 * 60_000

export interface Waiter {
  seq: number
  resolve: (r: PrestageTargetReport) => void
  reject: (err: Error) => void
  onReport: (r: PrestageTargetReport) => void
}

export class TargetReports {
  readonly #waiters = new Map<string, Waiter>()

  // The waiter for pre-stage `id`, if its source is waiting on a point.
  get (id: string): Waiter | undefined {
    return this.#waiters.get(id)
  }

  // Waits for point `seq` of `id`: `silent` makes the error when no report came in time.
  wait (id: string, seq: number, signal: AbortSignal, silent: () => Error, onReport: (r: PrestageTargetReport) => void): Promise<PrestageTargetReport> {
    return new Promise<PrestageTargetReport>((resolve, reject) => {
      let timer: NodeJS.Timeout
      const arm = () => {
        clearTimeout(timer)
        timer = setTimeout(() => finish(silent()), REPORT_TIMEOUT_MS)
      }
      const finish = (err?: Error, r?: PrestageTargetReport) => {
        clearTimeout(timer)
        signal.removeEventListener('abort', onAbort)
        if (this.#waiters.get(id) === waiter) this.#waiters.delete(id)
        if (err) reject(err)
        else resolve(r!)
      }
      const onAbort = () => finish(JOB_CANCELLED())
      const waiter: Waiter = {
        seq,
        resolve: r => finish(undefined, r),
        reject: err => finish(err),
        onReport: r => { arm(); onReport(r) }
      }
      this.#waiters.set(id, waiter)
      signal.addEventListener('abort', onAbort, { once: true })
      arm()
    })
  }
}
