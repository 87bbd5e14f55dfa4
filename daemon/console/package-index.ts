// The Packages index of a Debian-style repository, fetched once per (uri, suite, component,
// arch), kept for a while and searched by name and short description, so the spec editor can
// offer what the chosen repository really has. The index is only read for searching: apt checks
// the repository's signature when an image is built.

import fs from 'node:fs/promises'
import zlib from 'node:zlib'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { BAD_PARAMS, MIRROR_UNREACHABLE, NOT_FOUND } from '../../protocol/errors.js'
import type { PackageSearchResult, PackageSummary } from '../../protocol/rpc.js'
import { pickMirror, readHostSources } from '../builder/host-mirror.js'

const INDEX_TTL_MS = 30 * 60_000
const MAX_INDEXES = 8
const FETCH_TIMEOUT_MS = 120_000
const DEFAULT_LIMIT = 50
const MAX_LIMIT = 200

const SUITE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$/
const TOKEN = /^[a-z0-9][a-z0-9.+~-]{0,63}$/
const ARCH = /^[a-z0-9]{1,16}$/

const gunzip = promisify(zlib.gunzip)

export interface SearchParams {
  query: string
  suite: string
  uri?: string
  component?: string
  arch?: string
  limit?: number
}

interface Index {
  at: number
  entries: Promise<PackageSummary[]>
}

export class PackageIndex {
  readonly #aptDir: string
  readonly #indexes = new Map<string, Index>()

  constructor (options: { aptDir?: string } = {}) {
    this.#aptDir = options.aptDir ?? '/etc/apt'
  }

  async search (p: SearchParams): Promise<PackageSearchResult> {
    const suite = check(p.suite, SUITE, 'suite')
    if (suite.split('/').includes('..')) throw BAD_PARAMS('"suite" must not contain ..', { field: 'suite' })
    const component = check(p.component ?? 'main', TOKEN, 'component')
    const arch = check(p.arch ?? hostArch(), ARCH, 'arch')
    const limit = Math.min(Math.max(1, Math.floor(p.limit ?? DEFAULT_LIMIT)), MAX_LIMIT)
    const uri = await this.#uri(p.uri, suite)
    const entries = await this.#index(uri, suite, component, arch)
    const q = p.query.trim().toLowerCase()
    const scored: Array<[number, PackageSummary]> = []
    for (const e of entries) {
      const score = e.name === q ? 0 : e.name.startsWith(q) ? 1 : e.name.includes(q) ? 2 : e.description.toLowerCase().includes(q) ? 3 : -1
      if (score >= 0) scored.push([score, e])
    }
    scored.sort((a, b) => a[0] - b[0] || a[1].name.length - b[1].name.length || (a[1].name < b[1].name ? -1 : 1))
    return { uri, suite, component, arch, total: entries.length, matches: scored.length, packages: scored.slice(0, limit).map(s => s[1]) }
  }

  // The repository given, else the mirror this host's apt uses for the suite.
  async #uri (uri: string | undefined, suite: string): Promise<string> {
    if (uri === undefined) {
      const mirror = pickMirror(await readHostSources(this.#aptDir), suite)
      if (!mirror) throw BAD_PARAMS(`this host's apt has no mirror for ${suite}: give "uri"`, { field: 'uri' })
      return mirror
    }
    let url: URL
    try { url = new URL(uri) } catch { throw BAD_PARAMS(`"uri" ${JSON.stringify(uri)} is not a URL`, { field: 'uri' }) }
    if (!['http:', 'https:', 'file:'].includes(url.protocol)) throw BAD_PARAMS('"uri" must be an http, https or file URL', { field: 'uri' })
    return uri.replace(/\/+$/, '')
  }

  #index (uri: string, suite: string, component: string, arch: string): Promise<PackageSummary[]> {
    const key = `${uri} ${suite} ${component} ${arch}`
    const hit = this.#indexes.get(key)
    if (hit && Date.now() - hit.at < INDEX_TTL_MS) {
      // Least recently used goes first when the cache is full.
      this.#indexes.delete(key)
      this.#indexes.set(key, hit)
      return hit.entries
    }
    const entries = load(`${uri}/dists/${suite}/${component}/binary-${arch}/`)
    this.#indexes.set(key, { at: Date.now(), entries })
    entries.catch(() => { if (this.#indexes.get(key)?.entries === entries) this.#indexes.delete(key) })
    while (this.#indexes.size > MAX_INDEXES) this.#indexes.delete(this.#indexes.keys().next().value!)
    return entries
  }
}

async function load (dir: string): Promise<PackageSummary[]> {
  for (const [name, unpack] of [['Packages.gz', gunzip], ['Packages', async (b: Buffer) => b]] as const) {
    const data = await read(dir + name)
    if (data) return parsePackages((await unpack(data)).toString('utf8'))
  }
  throw NOT_FOUND(`${dir} holds no Packages index (check the suite, component and architecture)`, { field: 'suite' })
}

// The file's bytes, or undefined if the repository does not have it.
async function read (url: string): Promise<Buffer | undefined> {
  if (url.startsWith('file:')) {
    return fs.readFile(fileURLToPath(url)).catch(err => {
      if (err.code === 'ENOENT') return undefined
      throw MIRROR_UNREACHABLE(`cannot read ${url}: ${err.code ?? err.message}`)
    })
  }
  let res: Response
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) })
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message
    throw MIRROR_UNREACHABLE(`cannot fetch ${url}: ${cause}`)
  }
  if (res.status === 404 || res.status === 410) return undefined
  if (!res.ok) throw MIRROR_UNREACHABLE(`${url}: HTTP ${res.status}`)
  return Buffer.from(await res.arrayBuffer())
}

// Stanzas of a Packages file; one entry per name (the first, as apt lists them).
export function parsePackages (text: string): PackageSummary[] {
  const out: PackageSummary[] = []
  const seen = new Set<string>()
  let cur: Partial<PackageSummary> = {}
  const flush = () => {
    if (cur.name && !seen.has(cur.name)) {
      seen.add(cur.name)
      out.push({ name: cur.name, version: cur.version ?? '', section: cur.section ?? '', installedSize: cur.installedSize ?? 0, description: cur.description ?? '' })
    }
    cur = {}
  }
  let start = 0
  while (start <= text.length) {
    let end = text.indexOf('\n', start)
    if (end === -1) end = text.length
    const line = text.slice(start, end)
    start = end + 1
    if (line === '') { flush(); if (end === text.length) break; continue }
    const c = line.charCodeAt(0)
    if (c === 32 || c === 9) continue
    const colon = line.indexOf(':')
    if (colon === -1) continue
    const value = line.slice(colon + 1).trim()
    switch (line.slice(0, colon)) {
      case 'Package': cur.name = value; break
      case 'Version': cur.version = value; break
      case 'Section': cur.section = value; break
      case 'Installed-Size': cur.installedSize = Number(value) || 0; break
      case 'Description': cur.description = value; break
    }
  }
  flush()
  return out
}

function check (v: string, re: RegExp, field: string): string {
  if (!re.test(v)) throw BAD_PARAMS(`"${field}" ${JSON.stringify(v)} is not valid`, { field })
  return v
}

function hostArch (): string {
  return ({ x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ?? 'amd64'
}
