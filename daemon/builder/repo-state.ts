// The state of the apt repositories a build reads, as layer-key input: for each (URI, suite), the
// BLAKE3 of the signed text of its InRelease (Release where there is none). That text lists the
// hash of every index of the suite, so any change to any package in it changes the state; one
// small GET per suite tells, and a check is reused for CHECK_TTL_MS (a burst of requests makes
// one). Every state seen is kept in a history (first and last seen), which answers pins (a
// point in time: the state seen then; `offline`: the newest seen, no network) and an
// unreachable mirror (the newest seen, with a warning).

import fs from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { hash, toHex } from '../blocks/hash.js'
import { MIRROR_UNREACHABLE, SNAPSHOT_UNAVAILABLE } from '../../protocol/errors.js'
import type { RepoInput } from '../../protocol/rpc.js'

export const CHECK_TTL_MS = 60_000
const TIMEOUT_MS = 5_000
// Release files are tens to hundreds of KiB; anything past this is not one.
const MAX_RELEASE_BYTES = 8 << 20
const MAX_HISTORY = 256

export interface RepoRef {
  uri: string
  suite: string
}

interface Seen {
  hash: string
  first: number
  last: number
}

// A store for the history (a catalog sublevel); without one it lives in memory only.
export interface HistoryDb {
  get (key: string): Promise<Seen[] | undefined>
  put (key: string, value: Seen[]): Promise<void>
}

// `offline` or a time (ms since the epoch): which state of each repository a build uses.
export type Pin = 'offline' | number

export interface ResolvedInputs {
  inputs: RepoInput[]
  // One line per repository that could not be checked (its newest seen state is used).
  unreachable: string[]
}

export function refKey (r: RepoRef): string {
  return `${r.uri} ${r.suite}`
}

export class RepoStates {
  readonly #db: HistoryDb
  readonly #ttl: number
  // refKey → the last check, or the one in flight.
  readonly #checks = new Map<string, { at: number, result: Promise<string> }>()
  // Requests made to repositories (for tests and the bench: a burst makes one).
  requests = 0

  constructor (opts: { db?: HistoryDb, ttlMs?: number } = {}) {
    const mem = new Map<string, Seen[]>()
    this.#db = opts.db ?? { get: async k => mem.get(k), put: async (k, v) => { mem.set(k, v) } }
    this.#ttl = opts.ttlMs ?? CHECK_TTL_MS
  }

  // The state of every ref: current (checked at most once per TTL), or as pinned.
  async resolve (refs: RepoRef[], pin?: Pin): Promise<ResolvedInputs> {
    const inputs: RepoInput[] = []
    const unreachable: string[] = []
    for (const ref of dedupe(refs)) {
      const key = refKey(ref)
      const history = await this.#db.get(key) ?? []
      if (pin !== undefined) {
        const seen = pin === 'offline' ? history.at(-1) : [...history].reverse().find(s => s.first <= pin)
        if (seen) { inputs.push({ ...ref, hash: seen.hash, seenAt: new Date(seen.first).toISOString() }); continue }
        const when = pin === 'offline' ? 'offline' : new Date(pin).toISOString()
        throw SNAPSHOT_UNAVAILABLE(`snapshot ${when}: ${history.length ? `${ref.uri} ${ref.suite} was first seen here at ${new Date(history[0]!.first).toISOString()}` : `this host has never seen ${ref.uri} ${ref.suite}`}; build once without the pin, or fetch the image from the fleet`)
      }
      try {
        const h = await this.check(ref)
        const seen = (await this.#db.get(key) ?? []).find(s => s.hash === h)!
        inputs.push({ ...ref, hash: h, seenAt: new Date(seen.first).toISOString() })
      } catch (err) {
        const last = history.at(-1)
        const why = `${ref.uri} ${ref.suite}: ${(err as Error).message}`
        if (!last) {
          // Never seen: the build itself will fail to reach it, with apt's own words.
          inputs.push({ ...ref, hash: 'unreachable', seenAt: new Date().toISOString() })
        } else {
          inputs.push({ ...ref, hash: last.hash, seenAt: new Date(last.first).toISOString() })
        }
        unreachable.push(why)
      }
    }
    return { inputs, unreachable }
  }

  // The current state of one repository suite: one request per TTL, shared by concurrent callers.
  check (ref: RepoRef): Promise<string> {
    const key = refKey(ref)
    const now = Date.now()
    const cached = this.#checks.get(key)
    if (cached && now - cached.at < this.#ttl) return cached.result
    const result = this.#fetchState(ref).then(async h => {
      const history = await this.#db.get(key) ?? []
      const seen = history.find(s => s.hash === h)
      const t = Date.now()
      if (seen) seen.last = t
      else history.push({ hash: h, first: t, last: t })
      await this.#db.put(key, history.slice(-MAX_HISTORY))
      return h
    })
    this.#checks.set(key, { at: now, result })
    // A failed check is not kept: the next request tries again.
    result.catch(() => { if (this.#checks.get(key)?.result === result) this.#checks.delete(key) })
    return result
  }

  // Forgets the checks made, so the next request asks the repositories again.
  expire (): void {
    this.#checks.clear()
  }

  async #fetchState (ref: RepoRef): Promise<string> {
    this.requests++
    const base = `${ref.uri.replace(/\/+$/, '')}/dists/${ref.suite}/`
    for (const name of ['InRelease', 'Release']) {
      const text = await readUrl(base + name)
      if (text !== undefined) return toHex(hash(Buffer.from(signedText(text))))
    }
    throw MIRROR_UNREACHABLE(`${base} has neither InRelease nor Release`)
  }
}

// The signed body of a clearsigned InRelease (a new signature over the same text is the same
// state); a plain Release as it is.
export function signedText (text: string): string {
  const m = /^-----BEGIN PGP SIGNED MESSAGE-----\r?\n(?:[^\r\n]+\r?\n)*\r?\n([\s\S]*?)\r?\n-----BEGIN PGP SIGNATURE-----/.exec(text)
  return m ? m[1]! : text
}

// undefined: the file is not there (404, ENOENT); throws when the repository cannot be reached.
async function readUrl (url: string): Promise<string | undefined> {
  if (url.startsWith('file:')) {
    return fs.readFile(fileURLToPath(url), 'utf8').catch(err => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined
      throw MIRROR_UNREACHABLE(`${url}: ${err.code ?? err.message}`)
    })
  }
  let res: Response
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS), redirect: 'follow' })
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause
    throw MIRROR_UNREACHABLE(cause?.code ?? ((err as Error).name === 'TimeoutError' ? `no answer in ${TIMEOUT_MS / 1000} s` : (err as Error).message))
  }
  if (res.status === 404 || res.status === 410) { await res.body?.cancel(); return undefined }
  if (!res.ok) { await res.body?.cancel(); throw MIRROR_UNREACHABLE(`HTTP ${res.status} for ${url}`) }
  const body = Buffer.from(await res.arrayBuffer())
  if (body.length > MAX_RELEASE_BYTES) throw MIRROR_UNREACHABLE(`${url} is larger than ${MAX_RELEASE_BYTES} bytes`)
  return body.toString('utf8')
}

function dedupe (refs: RepoRef[]): RepoRef[] {
  const seen = new Map<string, RepoRef>()
  for (const r of refs) seen.set(refKey(r), { uri: r.uri.replace(/\/+$/, ''), suite: r.suite })
  return [...seen.values()].sort((a, b) => refKey(a) < refKey(b) ? -1 : 1)
}
