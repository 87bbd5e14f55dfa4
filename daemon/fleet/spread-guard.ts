// A whole holder serving a roll-out sends each block to one host first. A background request
// for a block this host sent to another host within SPREAD_MS is answered without it (missing):
// the asker takes it from the host that got it, which announces it within a Have interval, so
// the source's upload goes to blocks no receiver has yet (BitTorrent's super-seeding, in a pull
// protocol). A host that asks again for a block it was refused (the scheduler does, after a
// while, only when none of its peers has announced it) is served; so are the first host asking
// again, and foreground fetches. Pure: the clock is injected.

import { HASH_BYTES } from '../blocks/hash.js'

const SPREAD_MS = 60_000
// Blocks remembered at most (the oldest are forgotten first).
const MAX_REMEMBERED = 1 << 20

export interface SpreadGuardOptions {
  spreadMs?: number
  maxRemembered?: number
  now?: () => number
}

export class SpreadGuard {
  readonly #spreadMs: number
  readonly #max: number
  readonly #now: () => number
  // Block hash → who it was first sent to, when, and the hosts refused it since (insertion
  // order: oldest first).
  readonly #sent = new Map<string, { peer: string, at: number, refused?: Set<string> }>()

  constructor (options: SpreadGuardOptions = {}) {
    this.#spreadMs = options.spreadMs ?? SPREAD_MS
    this.#max = options.maxRemembered ?? MAX_REMEMBERED
    this.#now = options.now ?? (() => performance.now())
  }

  get size (): number { return this.#sent.size }

  // For a background request of `peer` for `hashes` (32 bytes each): 1 for each block to send,
  // 0 for one to withhold.
  filter (peer: string, hashes: Buffer): Uint8Array {
    const n = Math.floor(hashes.length / HASH_BYTES)
    const send = new Uint8Array(n)
    const now = this.#now()
    for (let j = 0; j < n; j++) {
      const key = hashes.toString('latin1', j * HASH_BYTES, (j + 1) * HASH_BYTES)
      const last = this.#sent.get(key)
      if (!last || now - last.at >= this.#spreadMs) {
        this.#sent.delete(key)
        this.#sent.set(key, { peer, at: now })
        send[j] = 1
      } else if (last.peer === peer || last.refused?.delete(peer)) {
        send[j] = 1
      } else {
        (last.refused ??= new Set()).add(peer)
      }
    }
    while (this.#sent.size > this.#max) this.#sent.delete(this.#sent.keys().next().value!)
    return send
  }
}
