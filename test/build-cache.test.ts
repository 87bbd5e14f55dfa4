// The layer cache: LRU eviction under a size cap and freeing the layers of a removed image,
// on quick rootfs-flavour builds (a busybox tarball; no network).

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Builder } from '../daemon/builder/builder.js'
import { parseSpec } from '../daemon/builder/spec.js'
import { createFileStore } from '../daemon/store/file/file-store.js'
import { specResolver } from '../testing/sources.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-build-cache-'))
t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
const tarball = await busyboxRootfs(path.join(dir, 'rootfs'), path.join(dir, 'rootfs.tar'))

const resolved = await specResolver(dir)
const spec = (n: number) => resolved(parseSpec(JSON.stringify({ name: `s${n}`, flavour: 'rootfs', rootfs: tarball, size: '64M', files: [{ path: '/n', content: `${n}\n` }] }), 'json'))

t.test('prune evicts the least recently used layers, never kept ones', async t => {
  const store = await createFileStore({ dir: path.join(dir, 'store-a') })
  const builder = new Builder({ store, workDir: path.join(dir, 'work-a') })
  const one = await builder.build(await spec(1))
  const two = await builder.build(await spec(2))
  const three = await builder.build(await spec(3))
  t.equal(one.layers[0]!.key, two.layers[0]!.key, 'one shared base')
  await builder.build(await spec(1)) // now layer s1 is more recent than s2
  const sizes = new Map((await store.list()).map(v => [v.key, v.allocated]))
  const total = [...sizes.values()].reduce((a, b) => a + b, 0)
  // Room for all but one files layer: the least recently used unkept one (s2's) must go.
  const removed = await builder.prune(total - 1, new Set([three.key]))
  t.same(removed, [two.key])
  t.equal(await store.stat(two.key), undefined)
  t.ok(await store.stat(one.key), 'recently used layer kept')
  // A cap of zero removes everything not kept.
  const rest = await builder.prune(0, new Set([three.key]))
  t.same(rest.sort(), [one.layers[0]!.key, one.key].sort())
  t.same((await store.list()).map(v => v.key), [three.key])
  // The usage record survives a new Builder (a daemon restart).
  const again = new Builder({ store, workDir: path.join(dir, 'work-a') })
  const rebuilt = await again.build(await spec(1))
  t.same(rebuilt.layers.map(l => l.cached), [false, false], 'evicted layers are rebuilt on demand')
})

t.test('removeLayers frees a removed image\'s layers that nothing else uses', async t => {
  const store = await createFileStore({ dir: path.join(dir, 'store-b') })
  const builder = new Builder({ store, workDir: path.join(dir, 'work-b') })
  const one = await builder.build(await spec(1))
  const two = await builder.build(await spec(2))
  const keep = new Set(two.layers.map(l => l.key))
  const freed = await builder.removeLayers(one.layers.map(l => l.key).reverse(), keep)
  t.same(freed, [one.key], 'the shared base stays')
  t.same((await store.list()).map(v => v.key).sort(), [...keep].sort())
})
