// Opens the configured LayerStore backend.

import path from 'node:path'
import type { Config } from '../config.js'
import type { LayerStore } from './layer-store.js'
import { createFileStore } from './file/file-store.js'
import { BAD_CONFIG } from '../../protocol/errors.js'
import { createLvmStore } from './lvm/lvm-store.js'

export async function openStore (config: Config): Promise<LayerStore> {
  switch (config.store) {
    case 'file': return createFileStore({ dir: path.join(config.dataDir, 'volumes') })
    case 'lvm':
      if (!config.lvm) throw BAD_CONFIG('store "lvm" needs lvm: { "vg": …, "pool": … }')
      return createLvmStore(config.lvm)
  }
}
