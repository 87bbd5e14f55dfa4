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
    h.push(t)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!before(h[i]!, h[p]!)) break
      ;[h[i], h[p]] = [h[p]!, h[i]!]
      i = p
    }
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
        h[0] = last
        let i = 0
        for (;;) {
          const l = 2 * i + 1
          const r = l + 1
          let m = i
          if (l < h.length && before(h[l]!, h[m]!)) m = l
          if (r < h.length && before(h[r]!, h[m]!)) m = r
          if (m === i) break
          ;[h[i], h[m]] = [h[m]!, h[i]!]
          i = m
        }
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
