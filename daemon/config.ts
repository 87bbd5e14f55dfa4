// osfarmd's configuration: built-in defaults, then a JSON file, then command-line flags, each
// checked against the schema in protocol/config.ts (which osfarmctl shares).

import path from 'node:path'
import os from 'node:os'
import { BAD_CONFIG } from '../protocol/errors.js'
import { DEFAULTS, isLoopbackListen, readConfigFile, validateConfig, type Config } from '../protocol/config.js'

export { DEFAULTS, readConfigFile, stripComments, validateConfig, type Config, type HttpConfig, type LvmConfig } from '../protocol/config.js'

export async function loadConfig (file: string | undefined, flags: Partial<Config>): Promise<Config> {
  const fromFile = file ? await readConfigFile(file) : {}
  const fromFlags = validateConfig(flags, 'flags')
  const merged = { ...DEFAULTS, ...fromFile, ...fromFlags }
  merged.http = { ...DEFAULTS.http, ...fromFile.http, ...fromFlags.http }
  if (merged.store === 'lvm' && !merged.lvm) throw BAD_CONFIG('store "lvm" needs lvm: { "vg": …, "pool": … }')
  if (merged.http.listen && !merged.http.token && !isLoopbackListen(merged.http.listen)) {
    throw BAD_CONFIG(`http.listen ${merged.http.listen} is not a loopback address: set http.token too`)
  }
  merged.dataDir = path.resolve(merged.dataDir)
  merged.socket = path.resolve(merged.socket)
  if (merged.hashThreads === 0) merged.hashThreads = os.availableParallelism()
  return merged
}
