// The file backend under the shared LayerStore suite, on both of its snapshot paths: a sparse
// copy (ext4, the test tmp dir) and a reflink clone (a loop-mounted xfs), where the clone must
// really share extents with its parent.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { execa } from 'execa'
import { createFileStore } from '../daemon/store/file/file-store.js'
import { layerStoreSuite, writeAt } from '../daemon/store/layer-store-suite.js'

const SIZE = 64 << 20
const isRoot = process.getuid?.() === 0

async function tmpdir (): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-store-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

// A filesystem of `type` in a sparse file, loop-mounted; undefined when this host cannot.
async function loopFs (type: 'xfs' | 'btrfs'): Promise<string | undefined> {
  const dir = await tmpdir()
  const image = path.join(dir, `${type}.img`)
  const mnt = path.join(dir, 'mnt')
  await fs.mkdir(mnt)
  await fs.writeFile(image, '')
  await fs.truncate(image, 1 << 30)
  const mkfs = await execa(`mkfs.${type}`, type === 'xfs' ? ['-q', '-m', 'reflink=1', image] : ['-q', image], { reject: false })
  if (mkfs.exitCode !== 0) return undefined
  const mount = await execa('mount', ['-o', 'loop', image, mnt], { reject: false })
  if (mount.exitCode !== 0) return undefined
  t.teardown(() => execa('umount', [mnt], { reject: false }))
  return mnt
}

// Physical extents of a file, from `filefrag -v`: [logical, physical, length, flags].
async function extents (file: string): Promise<Array<{ logical: number, physical: number, length: number, shared: boolean }>> {
  const { stdout } = await execa('filefrag', ['-v', file])
  const out = []
  for (const m of stdout.matchAll(/^\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+):\s*(?:\d+:)?\s*(.*)$/gm)) {
    out.push({ logical: Number(m[1]), physical: Number(m[2]), length: Number(m[3]), shared: /shared/.test(m[4]!) })
  }
  return out
}

t.test('file backend, copy path (tmp dir)', async t => {
  const dir = await tmpdir()
  const st = await execa('findmnt', ['-no', 'FSTYPE', '--target', dir])
  t.comment(`store on ${st.stdout.trim()}`)
  layerStoreSuite(t, { open: () => createFileStore({ dir: path.join(dir, 'store') }), size: SIZE, enforcesReadOnly: !isRoot })
})

const xfs = isRoot ? await loopFs('xfs') : undefined
const noReflink = !isRoot ? 'needs root to loop-mount a filesystem' : !xfs ? 'cannot make or loop-mount an xfs filesystem here' : false

t.test('file backend, reflink path (loop-mounted xfs)', { skip: noReflink }, async t => {
  const mnt = xfs!
  layerStoreSuite(t, { open: () => createFileStore({ dir: path.join(mnt, 'store') }), size: SIZE, enforcesReadOnly: !isRoot })

  t.test('a snapshot shares its parent\'s extents', async t => {
    const store = await createFileStore({ dir: path.join(mnt, 'reflink') })
    t.teardown(() => store.close())
    const base = await store.prepare('base', { size: SIZE })
    await writeAt(base.path, 0, randomBytes(16 << 20))
    await store.commit('base')
    const before = await fs.statfs(mnt)
    const child = await store.prepare('child', { parent: 'base' })
    const after = await fs.statfs(mnt)
    const parentExtents = await extents((await store.stat('base'))!.path)
    const childExtents = await extents(child.path)
    t.ok(childExtents.length > 0, `child has ${childExtents.length} extent(s)`)
    t.ok(childExtents.every(e => e.shared), 'every child extent is flagged shared')
    t.same(childExtents.map(e => [e.logical, e.physical, e.length]), parentExtents.map(e => [e.logical, e.physical, e.length]),
      'child and parent map to the same physical blocks')
    const grew = (before.bfree - after.bfree) * before.bsize
    t.ok(grew < (1 << 20), `snapshot of 16 MiB of data took ${grew} bytes of space`)
    await store.remove('child')
    await store.remove('base')
  })
})
