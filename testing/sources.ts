// The build service plans and builds specs from daemon-owned copies of their files
// (daemon/builder/sources.ts); tests that drive a Builder directly resolve specs the same way.

import path from 'node:path'
import t from 'tap'
import { SourceStore } from '../daemon/builder/sources.js'
import { StreamRegistry } from '../daemon/rpc/streams.js'
import { createLogger } from '../daemon/log.js'
import type { ImageSpec } from '../daemon/builder/spec.js'

export async function specResolver (dir: string): Promise<(spec: ImageSpec) => Promise<ImageSpec>> {
  const sources = new SourceStore({ dir: path.join(dir, 'sources'), streams: new StreamRegistry(), limits: { fileBytes: 64 << 20, rootfsBytes: 1 << 30 }, log: createLogger('error') })
  await sources.start()
  t.teardown(() => sources.stop())
  return async spec => (await sources.resolve(spec, 'admin')).spec
}
