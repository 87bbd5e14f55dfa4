// Tells peers what a fetch holds (Have messages). Foreground: at each synced flush, what changed
// since the last (the whole bitfield only once). Background: what was written, every HAVE_MS,
// so hosts fetching one image together see each other's new blocks sooner (written blocks are
// servable before they are synced; only the resume point waits for the sync).

const HAVE_MS = 250
// Changed bytes of a bitfield this close together go out as one range.
const MERGE_BYTES = 16

export interface HaveSink {
  broadcastHave (root: Buffer, bitfield: Buffer, startByte?: number): void
}

// Timers, injectable: the fleet simulator runs this in virtual time.
export interface HaveTimers {
  set (fn: () => void, ms: number): unknown
  clear (handle: unknown): void
}

const REAL_TIMERS: HaveTimers = {
  set: (fn, ms) => setTimeout(fn, ms),
  clear: handle => clearTimeout(handle as NodeJS.Timeout)
}

export class HaveBroadcaster {
  readonly #sink: HaveSink
  readonly #root: Buffer
  readonly #bits: Buffer
  readonly #timers: HaveTimers
  #timer: unknown
  #dirty = new Set<number>()
  #flushed: Buffer | undefined

  // `bits`: the fetch's live progress bitfield.
  constructor (sink: HaveSink, root: Buffer, bits: Buffer, timers: HaveTimers = REAL_TIMERS) {
    this.#sink = sink
    this.#root = root
    this.#bits = bits
    this.#timers = timers
  }

  // Everything it holds now (background: in place, zero, resumed).
  all (): void {
    this.#sink.broadcastHave(this.#root, this.#bits)
  }

  // Background: blocks just written; sent within HAVE_MS.
  written (indices: number[]): void {
    for (const i of indices) this.#dirty.add(i >> 3)
    this.#timer ??= this.#timers.set(() => this.#sendDirty(), HAVE_MS)
  }

  // Foreground: a flush saved `bits`; peers hear what changed since the last one.
  flushed (bits: Buffer): void {
    if (!this.#flushed) {
      this.#sink.broadcastHave(this.#root, bits)
      this.#flushed = Buffer.from(bits)
      return
    }
    const bytes: number[] = []
    for (let k = 0; k < bits.length; k++) if (bits[k] !== this.#flushed[k]) bytes.push(k)
    bits.copy(this.#flushed)
    this.#sendRanges(bits, bytes)
  }

  stop (): void {
    if (this.#timer !== undefined) this.#timers.clear(this.#timer)
    this.#timer = undefined
  }

  #sendDirty (): void {
    this.#timer = undefined
    const bytes = [...this.#dirty].sort((x, y) => x - y)
    this.#dirty = new Set()
    this.#sendRanges(this.#bits, bytes)
  }

  // Sends the given bytes of a bitfield (ascending byte offsets), near ones as one range.
  #sendRanges (bits: Buffer, bytes: number[]): void {
    for (let k = 0; k < bytes.length;) {
      let j = k
      while (j + 1 < bytes.length && bytes[j + 1]! - bytes[j]! <= MERGE_BYTES) j++
      this.#sink.broadcastHave(this.#root, bits.subarray(bytes[k]!, bytes[j]! + 1), bytes[k]!)
      k = j + 1
    }
  }
}
