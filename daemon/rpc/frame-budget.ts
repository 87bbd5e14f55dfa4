// One budget for the bytes of requests that have begun but not ended (partial frames on the
// sockets, HTTP bodies being read): a reader over budget pauses until others finish, so many
// slow or idle clients cannot hold more than the budget (plus one chunk each) between them.

export const MAX_BUFFERED_BYTES = 64 << 20

export class ByteBudget {
  readonly limit: number
  #used = 0
  readonly #waiting = new Set<() => void>()

  constructor (limit = MAX_BUFFERED_BYTES) {
    this.limit = limit
  }

  get used (): number { return this.#used }

  // Counts n bytes held; false when the budget is now spent (the caller should pause).
  take (n: number): boolean {
    this.#used += n
    return this.#used <= this.limit
  }

  release (n: number): void {
    this.#used = Math.max(0, this.#used - n)
    if (this.#used >= this.limit) return
    for (const resume of [...this.#waiting]) {
      if (this.#used >= this.limit) break
      this.#waiting.delete(resume)
      resume()
    }
  }

  // Calls resume once the budget has room; the returned function cancels that.
  whenFree (resume: () => void): () => void {
    if (this.#used < this.limit) { resume(); return () => {} }
    this.#waiting.add(resume)
    return () => { this.#waiting.delete(resume) }
  }
}
