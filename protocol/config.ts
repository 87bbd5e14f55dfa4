// osfarmd's configuration schema: the keys, their defaults and checks, and reading a config
// file (comments allowed: // and /* */). Every key is checked; an unknown key or a wrong type is
// an error that names it. Here, not in daemon/, so that `osfarmctl config check` validates a
// file without loading daemon code; daemon/config.ts merges file, flags and defaults.

import fs from 'node:fs/promises'
import { BAD_CONFIG, BAD_PARAMS } from './errors.js'

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const
export type LogLevel = typeof LOG_LEVELS[number]

// Block sizes of manifests: a power of two; 4096 matches filesystem blocks.
export const DEFAULT_BLOCK_SIZE = 4096
export const MIN_BLOCK_SIZE = 512
export const MAX_BLOCK_SIZE = 1 << 20

export function checkBlockSize (blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw BAD_PARAMS(`block size must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}, got ${blockSize}`)
  }
}

// The most bytes osfarmd reads from a host file a spec names for root, by default.
export const DEFAULT_MAX_SOURCE_BYTES = 64 << 20
export const DEFAULT_MAX_ROOTFS_BYTES = 4 * 2 ** 30

export interface Config {
  // Catalog, volumes and keys live here.
  dataDir: string
  // The JSON-RPC socket.
  socket: string
  // Socket file mode (octal string) and group; the group's members may use osfarmctl.
  socketMode: string
  socketGroup: string | null
  // The web console and JSON-RPC over HTTP, off by default. `listen` is "host:port"; `token`, a
  // bearer token, is required unless the host is a loopback address, where local users may
  // instead use the rights they have on the socket.
  http: HttpConfig
  // Layer store backend, and where the lvm backend keeps its thin volumes.
  store: 'file' | 'lvm'
  lvm: LvmConfig | null
  // Block size of new manifests (a power of two; 4096 matches filesystem blocks).
  blockSize: number
  // Layers and built images kept under this many bytes: after each build the least recently
  // used layers no image needs are evicted. 0: no cap.
  buildCacheBytes: number
  // Worker threads that hash blocks; 0 means one per core.
  hashThreads: number
  logLevel: LogLevel
  // Limit methods that change state to root: the socket above then serves only reads, and a
  // second socket, `<socket>-admin.sock` with mode 0600, serves everything.
  writeRequiresRoot: boolean
  // "host:port" on a loopback address for a Prometheus text endpoint (/metrics); null: off.
  metricsListen: string | null
  // The most bytes osfarmd reads from a host file a spec names for root: files[].source, and the
  // rootfs tarball (a whole root filesystem, so a larger cap).
  maxSourceBytes: number
  maxRootfsBytes: number
  // Connections served at once on each socket and on the HTTP listener; more are refused.
  maxConnections: number
  // A request that stalls this long part-way (a partial frame on the socket, HTTP headers or
  // body) has its connection closed; a connection waiting on a call is never idle.
  idleTimeoutSeconds: number
  // Each build step's bounds (it runs in a sandbox of its own): wall-clock seconds (0: none),
  // memory in bytes (0: three quarters of the host's) and CPUs' worth of time (0: no cap).
  // Memory and CPU need a cgroup (v2 delegated, or v1); the time limit always applies.
  buildStepTimeoutSeconds: number
  buildStepMemoryBytes: number
  buildStepCpus: number
  // How long a check of an apt repository's state (its InRelease) answers for: a layer key
  // reflects the mirror as of at most this long ago. Rebuild policies check this often too.
  mirrorCheckSeconds: number
  // The share of this host's cores (0 to 1) that packing the blocks it serves may use: a harder
  // zstd level, which saves link time, only where it fits this and the idle cores.
  serveCpuShare: number
}

export interface LvmConfig {
  // Volume group and thin pool; with `pvs`, both are created on those devices if missing.
  vg: string
  pool: string
  pvs?: string[]
  // Refuse new volumes once the pool's data or metadata use reaches this percentage (default 90).
  maxFillPercent?: number
}

export interface HttpConfig {
  listen: string | null
  token?: string
}

export const DEFAULTS: Config = {
  dataDir: '/var/lib/osfarm',
  socket: '/run/osfarm/osfarmd.sock',
  socketMode: '0660',
  socketGroup: null,
  http: { listen: null },
  store: 'file',
  lvm: null,
  blockSize: DEFAULT_BLOCK_SIZE,
  buildCacheBytes: 0,
  hashThreads: 0,
  logLevel: 'info',
  writeRequiresRoot: false,
  metricsListen: null,
  maxSourceBytes: DEFAULT_MAX_SOURCE_BYTES,
  maxRootfsBytes: DEFAULT_MAX_ROOTFS_BYTES,
  maxConnections: 128,
  idleTimeoutSeconds: 30,
  buildStepTimeoutSeconds: 3600,
  buildStepMemoryBytes: 0,
  buildStepCpus: 0,
  mirrorCheckSeconds: 60,
  serveCpuShare: 0.25
}

type Check = (v: unknown, key: string) => unknown
const bytes: Check = (v, k) => { if (!Number.isSafeInteger(v) || (v as number) < 1) throw BAD_CONFIG(`${k} must be a byte count (at least 1)`); return v }
const str: Check = (v, k) => { if (typeof v !== 'string' || v === '') throw BAD_CONFIG(`${k} must be a non-empty string`); return v }
const checks: Record<keyof Config, Check> = {
  dataDir: str,
  socket: str,
  socketMode: (v, k) => { if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) throw BAD_CONFIG(`${k} must be an octal mode like "0660"`); return v },
  socketGroup: (v, k) => v === null ? v : str(v, k),
  http: (v, k) => checkHttp(v, k),
  lvm: (v, k) => {
    if (v === null) return v
    const o = v as Record<string, unknown>
    if (typeof v !== 'object' || Array.isArray(v)) throw BAD_CONFIG(`${k} must be an object { vg, pool, pvs?, maxFillPercent? } or null`)
    for (const key of Object.keys(o)) if (!['vg', 'pool', 'pvs', 'maxFillPercent'].includes(key)) throw BAD_CONFIG(`${k}: unknown key "${key}"`)
    str(o.vg, `${k}.vg`)
    str(o.pool, `${k}.pool`)
    if (o.pvs !== undefined && (!Array.isArray(o.pvs) || !o.pvs.every(p => typeof p === 'string' && p.startsWith('/dev/')))) throw BAD_CONFIG(`${k}.pvs must be a list of /dev paths`)
    if (o.maxFillPercent !== undefined && !(typeof o.maxFillPercent === 'number' && o.maxFillPercent > 0 && o.maxFillPercent <= 100)) throw BAD_CONFIG(`${k}.maxFillPercent must be a number in (0, 100]`)
    return v
  },
  store: (v, k) => { if (v !== 'file' && v !== 'lvm') throw BAD_CONFIG(`${k} must be "file" or "lvm"`); return v },
  blockSize: (v, k) => { try { checkBlockSize(v as number) } catch (e) { throw BAD_CONFIG(`${k}: ${(e as Error).message.replace(/^\w+: /, '')}`) } return v },
  buildCacheBytes: (v, k) => { if (!Number.isSafeInteger(v) || (v as number) < 0) throw BAD_CONFIG(`${k} must be a byte count (0: no cap)`); return v },
  hashThreads: (v, k) => { if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 256) throw BAD_CONFIG(`${k} must be an integer from 0 to 256`); return v },
  logLevel: (v, k) => { if (!(LOG_LEVELS as readonly string[]).includes(v as string)) throw BAD_CONFIG(`${k} must be one of ${LOG_LEVELS.join(', ')}`); return v },
  maxSourceBytes: bytes,
  maxRootfsBytes: bytes,
  maxConnections: (v, k) => { if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > 65536) throw BAD_CONFIG(`${k} must be an integer from 1 to 65536`); return v },
  buildStepTimeoutSeconds: (v, k) => { if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 7 * 86400) throw BAD_CONFIG(`${k} must be a whole number of seconds up to a week (0: no limit)`); return v },
  buildStepMemoryBytes: (v, k) => { if (!Number.isSafeInteger(v) || (v as number) < 0 || ((v as number) > 0 && (v as number) < 64 * 2 ** 20)) throw BAD_CONFIG(`${k} must be a byte count of at least 64 MiB (0: three quarters of the host's memory)`); return v },
  serveCpuShare: (v, k) => { if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw BAD_CONFIG(`${k} must be a share of the cores from 0 to 1`); return v },
  mirrorCheckSeconds: (v, k) => { if (typeof v !== 'number' || !(v >= 1 && v <= 86400)) throw BAD_CONFIG(`${k} must be a number of seconds from 1 to 86400`); return v },
  buildStepCpus: (v, k) => { if (typeof v !== 'number' || !(v >= 0 && v <= 1024)) throw BAD_CONFIG(`${k} must be a number of CPUs from 0 to 1024 (0: no cap)`); return v },
  idleTimeoutSeconds: (v, k) => { if (typeof v !== 'number' || !(v >= 0.1 && v <= 86400)) throw BAD_CONFIG(`${k} must be a number of seconds from 0.1 to 86400`); return v },
  writeRequiresRoot: (v, k) => { if (typeof v !== 'boolean') throw BAD_CONFIG(`${k} must be true or false`); return v },
  metricsListen: (v, k) => {
    if (v === null) return v
    if (typeof v !== 'string' || !/^(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d{1,5}$/.test(v) || Number(v.split(':').pop()) > 65535) {
      throw BAD_CONFIG(`${k} must be "host:port" on a loopback address, e.g. "127.0.0.1:9477"`)
    }
    return v
  }
}

export function validateConfig (input: Record<string, unknown>, where = 'config'): Partial<Config> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue
    if (!Object.hasOwn(checks, key)) throw BAD_CONFIG(`${where}: unknown key "${key}"`)
    out[key] = checks[key as keyof Config](value, `${where}: ${key}`)
  }
  return out as Partial<Config>
}

export async function readConfigFile (file: string): Promise<Partial<Config>> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err) {
    throw BAD_CONFIG(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(stripComments(text))
  } catch (err) {
    throw BAD_CONFIG(`${file} is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw BAD_CONFIG(`${file} must hold a JSON object`)
  return validateConfig(parsed as Record<string, unknown>, file)
}

// Removes // and /* */ comments outside strings, so a config file can explain itself.
export function stripComments (text: string): string {
  let out = ''
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '"') {
      const start = i
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++
      out += text.slice(start, i + 1)
    } else if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++
      out += '\n'
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2)
      const comment = text.slice(i, end === -1 ? text.length : end + 2)
      out += comment.replace(/[^\n]/g, ' ')
      i = end === -1 ? text.length : end + 1
    } else {
      out += c
    }
  }
  return out
}

const LISTEN = /^(?:(\d{1,3}(?:\.\d{1,3}){3})|\[([0-9A-Fa-f:.]+)\]|(localhost)):(\d{1,5})$/

function checkHttp (v: unknown, k: string): Partial<HttpConfig> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw BAD_CONFIG(`${k} must be an object like { "listen": "127.0.0.1:7480" }`)
  const o = v as Record<string, unknown>
  for (const key of Object.keys(o)) if (key !== 'listen' && key !== 'token') throw BAD_CONFIG(`${k}: unknown key "${key}" (listen, token)`)
  if (o.listen !== undefined && o.listen !== null) {
    const m = typeof o.listen === 'string' ? LISTEN.exec(o.listen) : null
    if (!m || Number(m[4]) > 65535) throw BAD_CONFIG(`${k}.listen must be "host:port" with an IP address or localhost, e.g. "127.0.0.1:7480"`)
  }
  if (o.token !== undefined && (typeof o.token !== 'string' || !/^[\x21-\x7e]{16,256}$/.test(o.token))) {
    throw BAD_CONFIG(`${k}.token must be 16 to 256 printable characters without spaces`)
  }
  return o as Partial<HttpConfig>
}

export function isLoopbackListen (listen: string): boolean {
  const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[|\]$/g, '')
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}
