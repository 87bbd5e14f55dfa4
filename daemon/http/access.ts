// Who may use the HTTP listener, decided per request:
//   1. a bearer token (the `Authorization` header, or the cookie the console sets from it) equal
//      to `http.token` gives a socket-group member's rights (`user`), from anywhere;
//   2. without one, a connection from this host's loopback, addressed to a loopback name, gets
//      the rights its local user has on the Unix socket: root `admin`; a user the socket file's
//      owner, group and mode let in `user` (`read` when the socket serves only reads);
//   3. anything else is refused.
// Browsers are kept from lending a local user's trust to other sites: a request another site
// starts (Origin or Sec-Fetch-Site says so) is refused, and POST must be application/json.

import fs from 'node:fs/promises'
import { createHash, timingSafeEqual } from 'node:crypto'
import type http from 'node:http'
import { OsfarmError } from '../../protocol/errors.js'
import type { Rights } from '../../protocol/rpc.js'
import { heldInOurMountNamespace, isLoopback, loopbackPeer } from './peer-uid.js'

export type Access = Rights | 'none'
export const TOKEN_COOKIE = 'osfarm_token'
// Group membership changes rarely; /etc is re-read at most this often.
const ACCOUNTS_TTL_MS = 10_000

export interface AccessOptions {
  token: string | undefined
  // The socket whose permissions loopback users inherit.
  socket: string
  // The socket refuses methods marked `write` to everyone but root.
  socketReadOnly: boolean
}

export interface Decision {
  access: Access
  // Why, for the refusal's message and the log; never holds the token.
  reason: string
}

export class AccessControl {
  readonly #opts: AccessOptions
  readonly #tokenDigest: Buffer | undefined
  #accounts: { at: number, groups: Promise<Map<number, Set<number>>> } | undefined
  readonly #rootHere = new WeakMap<object, boolean>()

  constructor (opts: AccessOptions) {
    this.#opts = opts
    this.#tokenDigest = opts.token ? digest(opts.token) : undefined
  }

  get tokenRequired (): boolean { return this.#tokenDigest !== undefined }

  // Checks a token offered to POST /session.
  tokenMatches (offered: string | undefined): boolean {
    return this.#tokenDigest !== undefined && offered !== undefined && timingSafeEqual(digest(offered), this.#tokenDigest)
  }

  async decide (req: http.IncomingMessage): Promise<Decision> {
    const site = req.headers['sec-fetch-site']
    if (site === 'cross-site') return { access: 'none', reason: 'a request started by another site' }
    const origin = req.headers.origin
    if (origin !== undefined && !sameOrigin(origin, req.headers.host)) return { access: 'none', reason: `origin ${origin} is not this console` }
    const bearer = bearerToken(req)
    if (bearer !== undefined) return this.tokenMatches(bearer) ? { access: 'user', reason: 'token' } : { access: 'none', reason: 'wrong token' }
    // A stale cookie (the token was changed) does not lock a local user out.
    if (this.tokenMatches(cookie(req, TOKEN_COOKIE))) return { access: 'user', reason: 'token' }

    const sock = req.socket
    if (!isLoopback(sock.remoteAddress) || !isLoopbackHost(req.headers.host)) {
      return { access: 'none', reason: this.tokenRequired ? 'a token is required' : 'only local users may connect' }
    }
    const peer = await loopbackPeer(
      { address: sock.remoteAddress!, port: sock.remotePort! },
      { address: sock.localAddress!, port: sock.localPort! }
    )
    if (peer === undefined) return { access: 'none', reason: 'the connection\'s local user is unknown' }
    // Build steps run as root in this host's network: root's rights need root's own world too
    // (asked once per connection: the process at its other end does not change).
    if (peer.uid === 0) {
      let ours = this.#rootHere.get(sock)
      if (ours === undefined) this.#rootHere.set(sock, ours = await heldInOurMountNamespace(peer.inode, 0))
      if (!ours) return { access: 'none', reason: 'uid 0 outside osfarmd\'s mount namespace (a build sandbox or a container)' }
    }
    return this.#socketRights(peer.uid)
  }

  async #socketRights (uid: number): Promise<Decision> {
    if (uid === 0) return { access: 'admin', reason: 'uid 0' }
    const st = await fs.stat(this.#opts.socket).catch(() => undefined)
    if (!st) return { access: 'none', reason: 'the socket is missing' }
    let bit: number
    if (uid === st.uid) bit = 0o200
    else if ((await this.#groupsOf(uid)).has(st.gid)) bit = 0o020
    else bit = 0o002
    if (!(st.mode & bit)) return { access: 'none', reason: `uid ${uid} may not use the socket` }
    return { access: this.#opts.socketReadOnly ? 'read' : 'user', reason: `uid ${uid} via the socket's permissions` }
  }

  async #groupsOf (uid: number): Promise<Set<number>> {
    if (!this.#accounts || Date.now() - this.#accounts.at > ACCOUNTS_TTL_MS) {
      this.#accounts = { at: Date.now(), groups: readGroups() }
    }
    return (await this.#accounts.groups).get(uid) ?? new Set()
  }
}

// Each uid's groups: its primary group from /etc/passwd and the groups listing its name.
async function readGroups (): Promise<Map<number, Set<number>>> {
  const [passwd, group] = await Promise.all([
    fs.readFile('/etc/passwd', 'utf8').catch(() => ''),
    fs.readFile('/etc/group', 'utf8').catch(() => '')
  ])
  const byName = new Map<string, number>()
  const out = new Map<number, Set<number>>()
  for (const line of passwd.split('\n')) {
    const [name, , uid, gid] = line.split(':')
    if (!name || uid === undefined || gid === undefined) continue
    byName.set(name, Number(uid))
    out.set(Number(uid), new Set([Number(gid)]))
  }
  for (const line of group.split('\n')) {
    const [, , gid, members] = line.split(':')
    if (gid === undefined || !members) continue
    for (const m of members.split(',')) {
      const uid = byName.get(m.trim())
      if (uid !== undefined) out.get(uid)!.add(Number(gid))
    }
  }
  return out
}

export function bearerToken (req: http.IncomingMessage): string | undefined {
  const auth = req.headers.authorization
  if (auth === undefined) return undefined
  return /^Bearer\s+(\S+)\s*$/i.exec(auth)?.[1] ?? ''
}

export function cookie (req: http.IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=')
    if (i === -1 || part.slice(0, i).trim() !== name) continue
    try {
      return decodeURIComponent(part.slice(i + 1).trim())
    } catch {
      throw new OsfarmError('BAD_REQUEST', `malformed cookie ${name}`)
    }
  }
  return undefined
}

function digest (s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

function sameOrigin (origin: string, host: string | undefined): boolean {
  try {
    return host !== undefined && new URL(origin).host === host.toLowerCase()
  } catch {
    return false
  }
}

// A Host header naming a loopback address or localhost: a name that resolves elsewhere but was
// pointed at 127.0.0.1 (DNS rebinding) does not get a local user's trust.
function isLoopbackHost (host: string | undefined): boolean {
  if (!host) return false
  const name = host.toLowerCase().replace(/:\d+$/, '').replace(/^\[|\]$/g, '')
  return name === 'localhost' || name.endsWith('.localhost') || isLoopback(name)
}
