// A spec checked and planned without building: the editor shows the daemon's own errors (each
// naming its field) and which layers the store already holds.

import type { Rights, SpecCheckResult } from '../../protocol/rpc.js'
import type { BuildService } from '../builder/build-service.js'
import type { SpecFormat } from '../builder/spec.js'
import type { LayerStore } from '../store/layer-store.js'

export async function checkSpec (builds: BuildService, store: LayerStore, p: { spec: string, format?: SpecFormat, baseDir?: string, sources?: Record<string, string> }, rights: Rights): Promise<SpecCheckResult> {
  const parsed = builds.parse(p.spec, p.format, p.baseDir)
  const { spec, release } = await builds.resolve(parsed, rights, p.sources)
  try {
    const plan = await builds.builder.plan(spec)
    const layers = await Promise.all(plan.layers.map(async l => ({ key: l.key, step: l.kind, cached: (await store.stat(l.key))?.kind === 'committed' })))
    return { name: spec.name, key: plan.key, layers }
  } finally {
    release()
  }
}
