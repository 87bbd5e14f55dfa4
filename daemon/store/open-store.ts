// Opens the configured LayerStore backend.

import path from 'node:path'
import type { Config } from '../config.js'
import type { LayerStore } from './layer-store.js'
import { createFileStore } from './file/file-store.js'
import { BACKEND_UNAVAILABLE } from '../../protocol/errors.js'

export async function openStore (config: Config): Promise<LayerStore> {
  switch (config.store) {
    case 'file': return createFileStore({ dir: path.join(config.dataDir, 'volumes') })
    case 'lvm': throw BACKEND_UNAVAILABLE('the lvm store is not configured on this host')
  }
}
