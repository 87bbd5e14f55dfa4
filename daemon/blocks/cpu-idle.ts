// The idle share of this machine's CPUs, from /proc/stat sampled at most every SAMPLE_MS. The
// serving side packs harder (a slower zstd level) while the link is the limit, because packing
// time is then free; it is free only where cores are idle (with many daemons on few cores, as
// in a roll-out, it is not, so then it packs fast). Where /proc/stat cannot be read, the
// machine counts as idle.

import fs from 'node:fs'

// Short: a fetch lasts seconds, and a sample from before it began said the cores were idle.
const SAMPLE_MS = 250

let last: { at: number, idle: number, total: number } | undefined
let share = 1

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

// Idle share of all cores over the last sample (0..1; 1 until there are two samples).
export function cpuIdleShare (now = Date.now()): number {
  if (last && now - last.at < SAMPLE_MS) return share
  const s = read()
  if (!s) return 1
  if (last && s.total > last.total) share = (s.idle - last.idle) / (s.total - last.total)
  last = { at: now, ...s }
  return share
}
