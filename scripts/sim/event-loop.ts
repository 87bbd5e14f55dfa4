// Virtual time for the fleet simulator: a clock in milliseconds and a queue of timed callbacks
// (a binary heap; ties run in the order they were scheduled). Nothing here waits for real time.

interface Timed { at: number, seq: number, fn: () => void, cancelled: boolean }

export class EventLoop {
  #heap: Timed[] = []
  #seq = 0
  #now = 0
  #ran = 0

  get now (): number { return this.#now }
  // Callbacks run so far: the simulator's own cost.
  get ran (): number { return this.#ran }

  // Runs fn `ms` from now; returns a handle for cancel().
  at (ms: number, fn: () => void): Timed {
    const t: Timed = { at: this.#now + Math.max(0, ms), seq: this.#seq++, fn, cancelled: false }
    const h = this.#heap
    let i = h.length
    h.push(t)
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!before(t, h[p]!)) break
      h[i] = h[p]!
      i = p
    }
    h[i] = t
    return t
  }

  cancel (t: unknown): void {
    if (t) (t as Timed).cancelled = true
  }

  // Runs callbacks in time order until none is left, `until` returns true, or the clock passes
  // `limitMs`. Returns false when it stopped at the limit.
  run (until: () => boolean, limitMs: number): boolean {
    const h = this.#heap
    while (h.length) {
      if (until()) return true
      const t = h[0]!
      const last = h.pop()!
      if (h.length) {
        // Sift `last` down from the root.
        let i = 0
        for (;;) {
          const l = 2 * i + 1
          if (l >= h.length) break
          const r = l + 1
          const m = r < h.length && before(h[r]!, h[l]!) ? r : l
          if (!before(h[m]!, last)) break
          h[i] = h[m]!
          i = m
        }
        h[i] = last
      }
      if (t.cancelled) continue
      if (t.at > limitMs) return false
      this.#now = t.at
      this.#ran++
      t.fn()
    }
    return until()
  }
}

function before (a: Timed, b: Timed): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq)
}
