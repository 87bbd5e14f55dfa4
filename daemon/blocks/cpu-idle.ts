// Whether this machine's CPUs are all busy, from /proc/stat sampled at most once a second. The
// serving side packs harder (a slower zstd level) while the link is the limit, because packing
// time is then free; it is not free when every core is busy (many daemons on few cores, as in a
// roll-out), so then it packs fast. Where /proc/stat cannot be read, the machine counts as idle.

import fs from 'node:fs'

const SAMPLE_MS = 1000
// Below this idle share of all cores over the last sample, the machine counts as busy.
const BUSY_IDLE_SHARE = 0.1

let last: { at: number, idle: number, total: number } | undefined
let busy = false

function read (): { idle: number, total: number } | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!
    // cpu  user nice system idle iowait irq softirq steal ...
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    if (f.length < 5 || f.some(n => !Number.isFinite(n))) return undefined
    return { idle: f[3]! + f[4]!, total: f.reduce((a, b) => a + b, 0) }
  } catch {
    return undefined
  }
}

export function cpuBusy (now = Date.now()): boolean {
  if (last && now - last.at < SAMPLE_MS) return busy
  const s = read()
  if (!s) return false
  if (last && s.total > last.total) busy = (s.idle - last.idle) / (s.total - last.total) < BUSY_IDLE_SHARE
  last = { at: now, ...s }
  return busy
}
