// osfarmd's configuration: built-in defaults, then a JSON file, then command-line flags.
// Every key is checked; an unknown key or a wrong type is an error that names it.

import fs from 'node:fs/promises'
import path from 'node:path'
import os from 'node:os'
import { BAD_CONFIG } from '../protocol/errors.js'
import { LOG_LEVELS, type LogLevel } from './log.js'
import { checkBlockSize, DEFAULT_BLOCK_SIZE } from './blocks/manifest.js'

export interface Config {
  // Catalog, volumes and keys live here.
  dataDir: string
  // The JSON-RPC socket.
  socket: string
  // Socket file mode (octal string) and group; the group's members may use osfarmctl.
  socketMode: string
  socketGroup: string | null
  // Layer store backend.
  store: 'file' | 'lvm'
  // Block size of new manifests (a power of two; 4096 matches filesystem blocks).
  blockSize: number
  // Worker threads that hash blocks; 0 means one per core.
  hashThreads: number
  logLevel: LogLevel
}

export const DEFAULTS: Config = {
  dataDir: '/var/lib/osfarm',
  socket: '/run/osfarm/osfarmd.sock',
  socketMode: '0660',
  socketGroup: null,
  store: 'file',
  blockSize: DEFAULT_BLOCK_SIZE,
  hashThreads: 0,
  logLevel: 'info'
}

type Check = (v: unknown, key: string) => unknown
const str: Check = (v, k) => { if (typeof v !== 'string' || v === '') throw BAD_CONFIG(`${k} must be a non-empty string`); return v }
const checks: Record<keyof Config, Check> = {
  dataDir: str,
  socket: str,
  socketMode: (v, k) => { if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) throw BAD_CONFIG(`${k} must be an octal mode like "0660"`); return v },
  socketGroup: (v, k) => v === null ? v : str(v, k),
  store: (v, k) => { if (v !== 'file' && v !== 'lvm') throw BAD_CONFIG(`${k} must be "file" or "lvm"`); return v },
  blockSize: (v, k) => { try { checkBlockSize(v as number) } catch (e) { throw BAD_CONFIG(`${k}: ${(e as Error).message.replace(/^\w+: /, '')}`) } return v },
  hashThreads: (v, k) => { if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 256) throw BAD_CONFIG(`${k} must be an integer from 0 to 256`); return v },
  logLevel: (v, k) => { if (!LOG_LEVELS.includes(v as LogLevel)) throw BAD_CONFIG(`${k} must be one of ${LOG_LEVELS.join(', ')}`); return v }
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
    parsed = JSON.parse(text)
  } catch (err) {
    throw BAD_CONFIG(`${file} is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw BAD_CONFIG(`${file} must hold a JSON object`)
  return validateConfig(parsed as Record<string, unknown>, file)
}

export async function loadConfig (file: string | undefined, flags: Partial<Config>): Promise<Config> {
  const fromFile = file ? await readConfigFile(file) : {}
  const merged = { ...DEFAULTS, ...fromFile, ...validateConfig(flags, 'flags') }
  merged.dataDir = path.resolve(merged.dataDir)
  merged.socket = path.resolve(merged.socket)
  if (merged.hashThreads === 0) merged.hashThreads = os.availableParallelism()
  return merged
}
