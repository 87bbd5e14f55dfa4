// The store's crash recovery: active (unfinished) volumes a crash left are removed, except
// those `keep` names (unfinished fetches, which resume).

import type { LayerStore } from './layer-store.js'

export async function recoverVolumes (store: LayerStore, keep: (key: string) => boolean): Promise<string[]> {
  const orphans = (await store.list()).filter(v => v.kind === 'active' && !keep(v.key))
  for (const v of orphans) await store.remove(v.key)
  return orphans.map(v => v.key)
}
