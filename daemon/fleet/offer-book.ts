// Offers: adverts of images this host heard of through its peers but does not hold, kept so
// that seed policies see images advertised beyond this host's sessions (fleet-swarm.ts passes
// each new one on). Bounded: at most MAX_OFFERS, each forgotten OFFER_TTL_MS after it was last
// heard (a holder's own advert, in its Hello, tells new peers of it after that). Pure.

import { supersedes, type Advert } from '../../protocol/wire.js'

const MAX_OFFERS = 10_000
const OFFER_TTL_MS = 10 * 60_000

export class OfferBook {
  readonly #now: () => number
  // Root → the advert and when it was last heard (insertion order: oldest first).
  readonly #offers = new Map<string, { advert: Advert, at: number }>()

  constructor (now: () => number = Date.now) {
    this.#now = now
  }

  // Remembers `adverts`; returns those new here (or newer than the one known), to pass on.
  add (adverts: Advert[]): Advert[] {
    const fresh: Advert[] = []
    const now = this.#now()
    for (const a of adverts) {
      const hex = a.root.toString('hex')
      const known = this.#offers.get(hex)
      if (known) known.at = now
      if (known && !supersedes(a, known.advert)) continue
      this.#offers.delete(hex)
      this.#offers.set(hex, { advert: a, at: now })
      if (this.#offers.size > MAX_OFFERS) this.#offers.delete(this.#offers.keys().next().value!)
      fresh.push(a)
    }
    return fresh
  }

  // This host holds it now.
  remove (rootHex: string): void {
    this.#offers.delete(rootHex)
  }

  // Every offer heard within the time to live.
  all (): Advert[] {
    const now = this.#now()
    for (const [hex, o] of this.#offers) if (now - o.at > OFFER_TTL_MS) this.#offers.delete(hex)
    return [...this.#offers.values()].map(o => o.advert)
  }
}
