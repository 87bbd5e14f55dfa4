// The one LayerStore conformance suite, run against every backend (containerd's
// testsuite.SnapshotterSuite in spirit). A backend's test supplies a fixture that can open the
// same store again, which is how a restart after a crash is simulated.

import fs from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import type { Test } from 'tap'
import { OsfarmError } from '../../protocol/errors.js'
import type { LayerStore, VolumeInfo } from './layer-store.js'

export interface StoreFixture {
  // Opens the store; called again on the same backing storage to simulate a restart.
  open: () => Promise<LayerStore>
  // A volume size every backend can hold exactly (LVM rounds up to its extent size, 4 MiB).
  size: number
  // False where the backend cannot stop a writer (root ignores a file's 0444 mode).
  enforcesReadOnly?: boolean
}

const MiB = 1 << 20

export function layerStoreSuite (t: Test, fixture: StoreFixture): void {
  const size = fixture.size
  let store: LayerStore
  t.before(async () => { store = await fixture.open() })
  t.teardown(async () => { await store?.close() })

  t.test('an empty volume is active, reads as zeros, and is listed', async t => {
    const v = await store.prepare('empty-1', { size })
    t.equal(v.kind, 'active')
    t.equal(v.key, 'empty-1')
    t.equal(v.size, size)
    t.same(await readAt(v.path, size - 4096, 4096), Buffer.alloc(4096), 'reads as zeros')
    const st = await store.stat('empty-1')
    t.equal(st?.kind, 'active')
    t.equal(st?.path, v.path)
    t.ok((await store.list()).some(x => x.key === 'empty-1' && x.kind === 'active'), 'listed')
    t.equal(await store.stat('nothing-here'), undefined, 'stat of a missing key is undefined')
    await store.remove('empty-1')
    t.equal(await store.stat('empty-1'), undefined, 'removed')
  })

  t.test('commit makes a volume read-only', async t => {
    const v = await store.prepare('ro-1', { size })
    const data = randomBytes(64 * 1024)
    await writeAt(v.path, MiB, data)
    const c = await store.commit('ro-1')
    t.equal(c.kind, 'committed')
    t.equal((await store.stat('ro-1'))?.kind, 'committed')
    t.same(await readAt(c.path, MiB, data.length), data, 'data survives commit')
    if (fixture.enforcesReadOnly ?? true) await t.rejects(writeAt(c.path, 0, Buffer.from('x')), 'a committed volume refuses writes')
    else t.comment(`${store.backend}: a committed volume is read-only by mode only (root can still write it)`)
    await rejectsCode(t, store.commit('ro-1'), 'VOLUME_NOT_FOUND', 'committing twice')
    await store.remove('ro-1')
  })

  t.test('a snapshot starts as its parent and diverges alone', async t => {
    const base = await store.prepare('snap-base', { size })
    const a = randomBytes(128 * 1024)
    const b = randomBytes(128 * 1024)
    await writeAt(base.path, 0, a)
    await writeAt(base.path, size - b.length, b)
    // A volume's path may change when it is committed (the file backend renames it).
    const basePath = (await store.commit('snap-base')).path
    const child = await store.prepare('snap-child', { parent: 'snap-base' })
    t.equal(child.kind, 'active')
    t.equal(child.size, size)
    t.same(await readAt(child.path, 0, a.length), a, 'child has the parent\'s first bytes')
    t.same(await readAt(child.path, size - b.length, b.length), b, 'and its last')
    const c = randomBytes(4096)
    await writeAt(child.path, 8192, c)
    t.same(await readAt(child.path, 8192, 4096), c, 'child changed')
    t.same(await readAt(basePath, 8192, 4096), a.subarray(8192, 8192 + 4096), 'parent unchanged')
    await store.commit('snap-child')

    const grown = await store.prepare('snap-grown', { parent: 'snap-child', size: size * 2 })
    t.equal(grown.size, size * 2, 'a snapshot can be larger than its parent')
    t.same(await readAt(grown.path, 8192, 4096), c, 'grandchild sees the child\'s change')
    t.same(await readAt(grown.path, size + MiB, 4096), Buffer.alloc(4096), 'the new tail reads as zeros')

    await store.remove('snap-base')
    t.same(await readAt(grown.path, 0, 4096), a.subarray(0, 4096), 'removing an ancestor leaves descendants whole')
    await store.remove('snap-grown')
    await store.remove('snap-child')
  })

  t.test('bad input is refused with stable codes', async t => {
    await rejectsCode(t, store.prepare('Bad Key', { size }), 'BAD_PARAMS', 'a key outside the alphabet')
    await rejectsCode(t, store.prepare('../escape', { size }), 'BAD_PARAMS', 'a path in a key')
    await rejectsCode(t, store.prepare('no-size', {}), 'BAD_PARAMS', 'an empty volume without a size')
    await rejectsCode(t, store.prepare('orphan', { parent: 'no-such-parent' }), 'VOLUME_NOT_FOUND', 'a missing parent')
    await store.prepare('dup', { size })
    await rejectsCode(t, store.prepare('dup', { size }), 'VOLUME_EXISTS', 'a key in use by an active volume')
    await rejectsCode(t, store.prepare('child-of-active', { parent: 'dup' }), 'BAD_PARAMS', 'an active parent')
    await store.commit('dup')
    await rejectsCode(t, store.prepare('dup', { parent: 'dup' }), 'VOLUME_EXISTS', 'a key in use by a committed volume')
    await rejectsCode(t, store.remove('no-such-volume'), 'VOLUME_NOT_FOUND', 'removing a missing volume')
    await rejectsCode(t, store.commit('no-such-volume'), 'VOLUME_NOT_FOUND', 'committing a missing volume')
    await store.remove('dup')
  })

  t.test('keys with dots, dashes and underscores round-trip', async t => {
    // LVM reserves names containing `_tmeta`, `_rimage`, …; a key may still contain them.
    const key = 'a_tmeta.layer-1_rimage'
    const v = await store.prepare(key, { size })
    t.equal(v.key, key)
    t.ok((await store.list()).some(x => x.key === key), 'listed under its key')
    await store.commit(key)
    t.equal((await store.stat(key))?.kind, 'committed')
    await store.remove(key)
  })

  t.test('usage counts volumes and space', async t => {
    const before = await store.usage()
    t.equal(before.backend, store.backend)
    const v = await store.prepare('usage-1', { size })
    await writeAt(v.path, 0, randomBytes(2 * MiB))
    await fsyncPath(v.path)
    const after = await store.usage()
    t.equal(after.volumes, before.volumes + 1, 'one more volume')
    t.ok(after.bytesUsed >= before.bytesUsed + MiB, `bytes used grew (${before.bytesUsed} → ${after.bytesUsed})`)
    t.ok(after.bytesFree > 0, 'free space reported')
    const st = await store.stat('usage-1')
    // LVM reports use as a percentage with two decimals: allow that rounding.
    t.ok(st!.allocated >= 2 * MiB - size / 5000 && st!.allocated <= size, `allocated counts written bytes (${st!.allocated})`)
    await store.remove('usage-1')
  })

  t.test('changed blocks between a snapshot and its parent', async t => {
    if (!store.changedBlocks) return t.plan(0, `the ${store.backend} backend does not track changed blocks`)
    const base = await store.prepare('cb-base', { size })
    await writeAt(base.path, 0, randomBytes(4 * MiB))
    await store.commit('cb-base')
    await store.prepare('cb-child', { parent: 'cb-base' })
    t.same(await store.changedBlocks('cb-child', 'cb-base'), [], 'a fresh snapshot has no changes')
    const child = (await store.stat('cb-child'))!
    const writes: Array<[number, number]> = [[MiB + 4096, 8192], [3 * MiB, 4096], [size - 4096, 4096]]
    for (const [at, len] of writes) await writeAt(child.path, at, randomBytes(len))
    await fsyncPath(child.path)
    const ranges = await store.changedBlocks('cb-child', 'cb-base')
    for (const [at, len] of writes) {
      t.ok(ranges.some(([s, l]) => s <= at && at + len <= s + l), `write at ${at}+${len} is covered`)
    }
    const total = ranges.reduce((n, [, l]) => n + l, 0)
    t.ok(total <= writes.length * MiB, `ranges stay near the writes (${total} bytes in ${ranges.length} ranges)`)
    t.ok(ranges.every(([s, l], i) => i === 0 || s > ranges[i - 1]![0] + ranges[i - 1]![1] - 1), 'sorted and disjoint')
    await rejectsCode(t, store.changedBlocks('cb-child', 'no-such-volume'), 'VOLUME_NOT_FOUND', 'a missing parent')
    await store.remove('cb-child')
    await store.remove('cb-base')
  })

  t.test('after a crash between snapshot and commit, recover() removes the orphan', async t => {
    const base = await store.prepare('crash-base', { size })
    await writeAt(base.path, 0, Buffer.from('committed'))
    await store.commit('crash-base')
    const orphan = await store.prepare('crash-orphan', { parent: 'crash-base' })
    await writeAt(orphan.path, 0, Buffer.from('half-done'))
    // A restart: the store is opened afresh and knows nothing but what is on disk.
    await store.close()
    store = await fixture.open()
    t.same(await store.recover(), ['crash-orphan'], 'the uncommitted volume is reported')
    t.equal(await store.stat('crash-orphan'), undefined, 'and gone')
    t.equal((await store.stat('crash-base'))?.kind, 'committed', 'committed volumes stay')
    t.same(await store.recover(), [], 'a second recover finds nothing')
    await store.remove('crash-base')
  })

  t.test('the store ends empty', async t => {
    t.same((await store.list()).map(v => v.key), [])
  })
}

export async function rejectsCode (t: Test, p: Promise<unknown>, code: string, what: string): Promise<void> {
  try {
    await p
    t.fail(`${what}: expected ${code}, it succeeded`)
  } catch (err) {
    t.ok(err instanceof OsfarmError && err.code === code, `${what}: ${code}`, { found: (err as Error).message })
  }
}

export async function readAt (path: string, at: number, length: number): Promise<Buffer> {
  const fh = await fs.open(path, 'r')
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fh.read(buf, 0, length, at)
    return buf.subarray(0, bytesRead)
  } finally { await fh.close() }
}

export async function writeAt (path: string, at: number, data: Buffer): Promise<void> {
  const fh = await fs.open(path, 'r+')
  try {
    await fh.write(data, 0, data.length, at)
    await fh.sync()
  } finally { await fh.close() }
}

export async function fsyncPath (path: string): Promise<void> {
  const fh = await fs.open(path, 'r+')
  try { await fh.sync() } finally { await fh.close() }
}

export type { VolumeInfo }
