// A token bucket for upload limits. `take(n)` resolves when n bytes may go out; a limit of 0
// means unlimited. Bursts up to a quarter second of the rate (at least one frame).

const MIN_BURST = 2 << 20

export class RateLimiter {
  // Bytes taken through it (reserve() and take()).
  bytes = 0
  #rate: number
  #tokens: number
  #last = performance.now()
  #queue: Promise<void> = Promise.resolve()

  constructor (bytesPerSecond = 0) {
    this.#rate = bytesPerSecond
    this.#tokens = this.#burst
  }

  get rate (): number { return this.#rate }
  set rate (bytesPerSecond: number) { this.#rate = bytesPerSecond }

  get #burst (): number { return Math.max(MIN_BURST, this.#rate / 4) }

  // For callers that cannot wait on a promise: takes n bytes and returns 0 when the bucket
  // holds them, else takes nothing and returns the milliseconds until it will. Not to be mixed
  // with take() on one limiter.
  reserve (n: number): number {
    if (this.#rate <= 0) { this.bytes += n; return 0 }
    const now = performance.now()
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.#rate / 1000)
    this.#last = now
    const need = Math.min(n, this.#burst)
    if (this.#tokens >= need) {
      this.#tokens -= n
      this.bytes += n
      return 0
    }
    return Math.max(1, Math.ceil((need - this.#tokens) * 1000 / this.#rate))
  }

  take (n: number): Promise<void> {
    if (this.#rate <= 0) { this.bytes += n; return Promise.resolve() }
    const next = this.#queue.then(() => this.#wait(n))
    this.#queue = next
    return next
  }

  async #wait (n: number): Promise<void> {
    for (;;) {
      const now = performance.now()
      this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.#rate / 1000)
      this.#last = now
      if (this.#rate <= 0 || this.#tokens >= Math.min(n, this.#burst)) {
        this.#tokens -= n
        this.bytes += n
        return
      }
      const ms = Math.min(1000, Math.ceil((Math.min(n, this.#burst) - this.#tokens) * 1000 / this.#rate))
      await new Promise(resolve => setTimeout(resolve, ms))
    }
  }
}
