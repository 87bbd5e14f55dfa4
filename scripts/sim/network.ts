// The simulated network: every host has an upload and a download rate; a transfer is a flow
// from one host's uplink to another's downlink, and its rate is the smaller of its equal share
// of the sender's uplink and of the receiver's downlink (each host's flows share its links
// equally). Rates are recomputed for the flows of the two hosts whenever one starts or ends.
// A message's latency is added by the caller; small messages (requests, Haves) take no
// bandwidth. Not modelled: congestion control, slow start, loss, a shared core.

import type { EventLoop } from './event-loop.js'

export interface Link { up: number, down: number }

interface Flow {
  from: number
  to: number
  left: number
  rate: number
  since: number
  // When its timer fires: a slower rate since leaves it in place (it fires early, and the flow
  // is timed again then), so most rate changes cost no timer at all.
  due: number
  timer: unknown
  done: () => void
}

export class Network {
  readonly #loop: EventLoop
  // Bytes per millisecond.
  readonly #links: Link[]
  readonly #up: Array<Set<Flow>>
  readonly #down: Array<Set<Flow>>
  readonly sent: Float64Array
  readonly received: Float64Array

  constructor (loop: EventLoop, links: Link[]) {
    this.#loop = loop
    this.#links = links.map(l => ({ up: l.up / 1000, down: l.down / 1000 }))
    this.#up = links.map(() => new Set())
    this.#down = links.map(() => new Set())
    this.sent = new Float64Array(links.length)
    this.received = new Float64Array(links.length)
  }

  // Moves `bytes` from host `from` to host `to`; `done` runs when the last byte has left the
  // sender's link and reached the receiver's (latency is the caller's).
  send (from: number, to: number, bytes: number, done: () => void): () => void {
    const f: Flow = { from, to, left: bytes, rate: 0, since: this.#loop.now, due: Infinity, timer: undefined, done }
    this.#up[from]!.add(f)
    this.#down[to]!.add(f)
    this.#rerate(from, to)
    return () => this.#end(f, false)
  }

  // Every flow of host h stops (it left): nothing more is delivered.
  drop (h: number): void {
    for (const f of [...this.#up[h]!, ...this.#down[h]!]) this.#end(f, false)
  }

  #end (f: Flow, delivered: boolean): void {
    if (!this.#up[f.from]!.has(f)) return
    this.#settleOne(f, delivered)
    this.#loop.cancel(f.timer)
    this.#up[f.from]!.delete(f)
    this.#down[f.to]!.delete(f)
    this.#rerate(f.from, f.to)
    if (delivered) f.done()
  }

  #rerate (from: number, to: number): void {
    const seen = new Set<Flow>()
    for (const set of [this.#up[from]!, this.#down[to]!]) {
      for (const f of set) {
        if (seen.has(f)) continue
        seen.add(f)
        // Bytes moved at the old rate first.
        this.#settleOne(f)
        f.rate = Math.min(this.#links[f.from]!.up / this.#up[f.from]!.size, this.#links[f.to]!.down / this.#down[f.to]!.size)
        this.#time(f)
      }
    }
  }

  // Times the flow's end: a new timer only where it would now end before the one it has.
  #time (f: Flow): void {
    const due = this.#loop.now + f.left / f.rate
    if (f.timer && due >= f.due) return
    this.#loop.cancel(f.timer)
    f.due = due
    f.timer = this.#loop.at(due - this.#loop.now, () => {
      f.timer = undefined
      this.#settleOne(f)
      // Less than a byte left: delivered.
      if (f.left < 1) this.#end(f, true)
      else this.#time(f)
    })
  }

  // Counts what moved since the flow's last rate change (all that was left, once delivered).
  #settleOne (f: Flow, delivered = false): void {
    const now = this.#loop.now
    const moved = delivered ? f.left : Math.min(f.left, f.rate * (now - f.since))
    f.left -= moved
    this.sent[f.from]! += moved
    this.received[f.to]! += moved
    f.since = now
  }
}
