// The one poller of the tests and scripts: probes until it gives a value (anything but
// undefined, null or false), bounded in time. A probe that throws is retried until the end;
// then the last error is part of the message.

export interface EventuallyOptions {
  timeoutMs?: number
  intervalMs?: number
}

const TIMEOUT_MS = 60_000
const INTERVAL_MS = 100

export async function eventually<T> (what: string, probe: () => T | undefined | null | false | Promise<T | undefined | null | false>, options: EventuallyOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? TIMEOUT_MS
  const end = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await probe()
      if (v !== undefined && v !== null && v !== false) return v
      last = undefined
    } catch (err) {
      last = err
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs / 1000} s${last ? ` (last: ${(last as Error).message})` : ''}`)
    await new Promise(resolve => setTimeout(resolve, options.intervalMs ?? INTERVAL_MS))
  }
}
