// Relabellings heard of: one builder's adverts for one root, the newest kept, so that a copy
// passed on by a holder that has not heard of a relabelling yet never undoes it. Bounded (the
// oldest forgotten first). Pure.

import { supersedes, type Advert } from '../../protocol/wire.js'

const MAX_REVISED = 10_000

export class Revisions {
  readonly #revised = new Map<string, Advert>()

  // The newest relabelling heard of `a`, or `a`.
  newest (a: Advert): Advert {
    const known = this.#revised.get(key(a))
    return known && supersedes(known, a) ? known : a
  }

  // The newest of `a` and what was heard before; `revised`: `a` is a relabelling newer than
  // any heard of before.
  remember (a: Advert): { advert: Advert, revised: boolean } {
    const k = key(a)
    const known = this.#revised.get(k)
    if (known && !supersedes(a, known)) return { advert: known, revised: false }
    if (!a.revision) return { advert: a, revised: false }
    this.#revised.delete(k)
    this.#revised.set(k, a)
    if (this.#revised.size > MAX_REVISED) this.#revised.delete(this.#revised.keys().next().value!)
    return { advert: a, revised: true }
  }
}

function key (a: Advert): string {
  return a.root.toString('hex') + a.builder.toString('hex')
}
