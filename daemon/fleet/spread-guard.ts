// A whole holder serving a roll-out sends each block to one host first. A background request
// for blocks this host sent to another host within SPREAD_MS is answered without them (missing):
// the asker takes them from the host that got them, which announces them within a Have
// interval, so the source's upload goes to blocks no receiver has yet (BitTorrent's
// super-seeding, in a pull protocol). The same host asking again, and foreground fetches, are
// served as ever. Pure: the clock is injected.

import { HASH_BYTES } from '../blocks/hash.js'

const SPREAD_MS = 2000
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
  // Block hash → who it was last sent to, and when (insertion order: oldest first).
  readonly #sent = new Map<string, { peer: string, at: number }>()

  constructor (options: SpreadGuardOptions = {}) {
    this.#spreadMs = options.spreadMs ?? SPREAD_MS
    this.#max = options.maxRemembered ?? MAX_REMEMBERED
    this.#now = options.now ?? (() => performance.now())
  }

  get size (): number { return this.#sent.size }

  // For a background request of `peer` for `hashes` (32 bytes each): 1 for each block to send,
  // 0 for one sent to another host within the spread time. Blocks to send count as sent now.
  filter (peer: string, hashes: Buffer): Uint8Array {
    const n = Math.floor(hashes.length / HASH_BYTES)
    const send = new Uint8Array(n)
    const now = this.#now()
    for (let j = 0; j < n; j++) {
      const key = hashes.toString('latin1', j * HASH_BYTES, (j + 1) * HASH_BYTES)
      const last = this.#sent.get(key)
      if (last && last.peer !== peer && now - last.at < this.#spreadMs) continue
      send[j] = 1
      // Re-inserted: the map stays ordered by time sent.
      this.#sent.delete(key)
      this.#sent.set(key, { peer, at: now })
    }
    while (this.#sent.size > this.#max) this.#sent.delete(this.#sent.keys().next().value!)
    return send
  }
}
