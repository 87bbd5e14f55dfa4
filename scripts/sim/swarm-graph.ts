// Who is connected to whom, as Hyperswarm gives it: a host that joins a topic announces itself
// and looks the topic up; a lookup returns a bounded, random set of the hosts that announced it
// before; the host connects to them while it has fewer than `maxPeers` connections and so does
// the other end. `full` is a full mesh instead (every host dials every allowed host). As in
// fleet-swarm.ts, a host dials only while it has fewer than half of maxPeers and accepts while
// it has fewer than maxPeers, so a host joining late finds hosts with room.

export type Mesh = 'full' | 'topic'

export interface GraphOptions {
  hosts: number
  mesh: Mesh
  maxPeers: number
  // Hosts one lookup returns at most.
  lookupPeers: number
  random: () => number
}

export class SwarmGraph {
  readonly #o: GraphOptions
  readonly #links: Array<Set<number>>
  readonly #topics = new Map<string, number[]>()
  readonly #gone = new Set<number>()

  constructor (options: GraphOptions) {
    this.#o = options
    this.#links = Array.from({ length: options.hosts }, () => new Set<number>())
  }

  peers (h: number): ReadonlySet<number> { return this.#links[h]! }
  connected (a: number, b: number): boolean { return this.#links[a]!.has(b) }
  get maxConnections (): number { return Math.max(...this.#links.map(l => l.size)) }

  // Host h joins `topic` (announces, then looks it up): the new connections it made.
  join (h: number, topic: string): number[] {
    const announced = this.#topics.get(topic) ?? []
    this.#topics.set(topic, announced)
    const made: number[] = []
    if (this.#o.mesh === 'full') {
      for (const o of announced) if (this.#connect(h, o)) made.push(o)
    } else {
      for (const o of this.#lookup(announced, h)) if (this.#connect(h, o)) made.push(o)
    }
    announced.push(h)
    return made
  }

  // Host h looks `topic` up again (it lost connections): the new connections.
  lookAgain (h: number, topic: string): number[] {
    const made: number[] = []
    for (const o of this.#lookup(this.#topics.get(topic) ?? [], h)) if (this.#connect(h, o)) made.push(o)
    return made
  }

  // Host h leaves: its connections close; returns its peers.
  leave (h: number): number[] {
    this.#gone.add(h)
    const peers = [...this.#links[h]!]
    for (const o of peers) this.#links[o]!.delete(h)
    this.#links[h]!.clear()
    for (const list of this.#topics.values()) {
      const i = list.indexOf(h)
      if (i >= 0) list.splice(i, 1)
    }
    return peers
  }

  #lookup (announced: number[], h: number): number[] {
    const pool = announced.filter(o => o !== h && !this.#gone.has(o))
    const n = Math.min(this.#o.lookupPeers, pool.length)
    // A partial Fisher-Yates: n distinct hosts at random.
    for (let i = 0; i < n; i++) {
      const j = i + Math.floor(this.#o.random() * (pool.length - i))
      ;[pool[i], pool[j]] = [pool[j]!, pool[i]!]
    }
    return pool.slice(0, n)
  }

  #connect (a: number, b: number): boolean {
    if (a === b || this.#links[a]!.has(b) || this.#gone.has(a) || this.#gone.has(b)) return false
    if (this.#o.mesh === 'topic' && (this.#links[a]!.size >= Math.max(1, Math.floor(this.#o.maxPeers / 2)) || this.#links[b]!.size >= this.#o.maxPeers)) return false
    this.#links[a]!.add(b)
    this.#links[b]!.add(a)
    return true
  }
}
