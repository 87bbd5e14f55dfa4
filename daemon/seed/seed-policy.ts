// Seed policies: which of the images the fleet advertises a host holds ahead of need. Pure:
// checking a policy, matching an advert, and choosing the wanted set from what is advertised.

import { randomBytes } from 'node:crypto'
import { BAD_PARAMS } from '../../protocol/errors.js'
import type { SeedPolicy, SeedPolicyParams } from '../../protocol/rpc.js'

export const MAX_KEEP = 100
export const MAX_POLICIES = 256
const PATTERN = /^[A-Za-z0-9._:+@*?[\]-]{1,128}$/

export function newPolicy (p: SeedPolicyParams, scope: SeedPolicy['scope']): SeedPolicy {
  return checkPolicy({
    id: randomBytes(4).toString('hex'),
    match: p.match,
    label: p.label ?? null,
    keep: p.keep ?? 1,
    maxSize: p.maxSize ?? null,
    priority: p.priority ?? 0,
    uploadLimit: p.uploadLimit ?? 0,
    downloadLimit: p.downloadLimit ?? 0,
    scope,
    createdAt: new Date().toISOString()
  })
}

// Checks a policy from a user or a peer; throws BAD_PARAMS naming the field.
export function checkPolicy (p: SeedPolicy): SeedPolicy {
  if (typeof p !== 'object' || p === null) throw BAD_PARAMS('a policy must be an object')
  if (typeof p.id !== 'string' || !/^[0-9a-f]{8}$/.test(p.id)) throw BAD_PARAMS('policy id must be 8 hex digits')
  if (typeof p.match !== 'string' || !PATTERN.test(p.match)) throw BAD_PARAMS(`match must be a name glob (letters, digits, ._:+@-, * and ?), got ${JSON.stringify(p.match)}`)
  if (p.label !== null && (typeof p.label !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=[^,\n]{0,190}$/.test(p.label))) throw BAD_PARAMS(`label must be key=glob, got ${JSON.stringify(p.label)}`)
  if (!Number.isInteger(p.keep) || p.keep < 1 || p.keep > MAX_KEEP) throw BAD_PARAMS(`keep must be 1..${MAX_KEEP}`)
  if (p.maxSize !== null && (!Number.isSafeInteger(p.maxSize) || p.maxSize <= 0)) throw BAD_PARAMS('maxSize must be a positive number of bytes')
  if (!Number.isInteger(p.priority) || Math.abs(p.priority) > 1000) throw BAD_PARAMS('priority must be an integer from -1000 to 1000')
  for (const k of ['uploadLimit', 'downloadLimit'] as const) {
    if (!Number.isSafeInteger(p[k]) || p[k] < 0) throw BAD_PARAMS(`${k} must be bytes per second (0: none)`)
  }
  if (p.scope !== 'host' && p.scope !== 'fleet') throw BAD_PARAMS('scope must be host or fleet')
  if (typeof p.createdAt !== 'string' || Number.isNaN(Date.parse(p.createdAt))) throw BAD_PARAMS('createdAt must be a date')
  return {
    id: p.id, match: p.match, label: p.label, keep: p.keep, maxSize: p.maxSize, priority: p.priority,
    uploadLimit: p.uploadLimit, downloadLimit: p.downloadLimit, scope: p.scope, createdAt: p.createdAt
  }
}

// A glob (* any run, ? one character, [..] a class) as an anchored RegExp.
export function globToRegExp (glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*') re += '.*'
    else if (c === '?') re += '.'
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1)
      if (end < 0) { re += '\\['; continue }
      re += '[' + glob.slice(i + 1, end).replace(/\\/g, '\\\\') + ']'
      i = end
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}

// What the policies see of an image the fleet advertises.
export interface Offer {
  root: string
  name: string
  size: number
  labels: string[]
  // The builder's time (ms); else when this host first heard of it.
  created: number
}

export function matches (policy: SeedPolicy, offer: Offer): boolean {
  if (!globToRegExp(policy.match).test(offer.name)) return false
  if (policy.label) {
    const eq = policy.label.indexOf('=')
    const key = policy.label.slice(0, eq)
    const value = globToRegExp(policy.label.slice(eq + 1))
    if (!offer.labels.some(l => l.slice(0, l.indexOf('=')) === key && value.test(l.slice(l.indexOf('=') + 1)))) return false
  }
  return policy.maxSize === null || offer.size <= policy.maxSize
}

export interface Want {
  offer: Offer
  // The policies that want it, highest priority first.
  policies: SeedPolicy[]
  priority: number
  downloadLimit: number
}

// For each policy, its `keep` newest matching offers; an offer several policies want takes the
// highest priority among them and the most generous download limit.
export function chooseWanted (policies: SeedPolicy[], offers: Offer[]): Map<string, Want> {
  const wanted = new Map<string, Want>()
  const newestFirst = [...offers].sort((a, b) => b.created - a.created || (a.root < b.root ? -1 : 1))
  for (const p of [...policies].sort((a, b) => b.priority - a.priority)) {
    let kept = 0
    for (const o of newestFirst) {
      if (kept >= p.keep) break
      if (!matches(p, o)) continue
      kept++
      const w = wanted.get(o.root)
      if (!w) {
        wanted.set(o.root, { offer: o, policies: [p], priority: p.priority, downloadLimit: p.downloadLimit })
      } else {
        w.policies.push(p)
        w.downloadLimit = w.downloadLimit === 0 || p.downloadLimit === 0 ? 0 : Math.max(w.downloadLimit, p.downloadLimit)
      }
    }
  }
  return wanted
}

// Whose upload limit governs serving an image that `policies` want: the most generous (no limit
// beats any), as for downloads.
export function uploadPolicy (policies: SeedPolicy[]): SeedPolicy | undefined {
  const generous = (p: SeedPolicy) => p.uploadLimit === 0 ? Infinity : p.uploadLimit
  return policies.reduce<SeedPolicy | undefined>((best, p) => !best || generous(p) > generous(best) ? p : best, undefined)
}

// For a seeding request that does not name its image (an older peer): the strictest limit.
export function strictestUploadPolicy (policies: SeedPolicy[]): SeedPolicy | undefined {
  return policies.filter(p => p.uploadLimit > 0).sort((a, b) => a.uploadLimit - b.uploadLimit)[0]
}
