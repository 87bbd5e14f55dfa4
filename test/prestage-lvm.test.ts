// Pre-staging's LVM path, for real, in a QEMU guest (scripts/vm; see store-lvm.test.ts): a VM
// disk that is a thin snapshot of an image's LV (outside the store), written to; a point taken
// as a thin snapshot of it (no copy) and indexed from thin_delta against the image, the rest of
// the manifest from the image's; more writes, the next point indexed from thin_delta against
// the first. Each manifest must equal a full index of its point.

import t from 'tap'
import fs from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { createLvmStore, lvName, type LvmStoreOptions } from '../daemon/store/lvm/lvm-store.js'
import { NO_UDEV_CONFIG } from '../daemon/store/lvm/lvm.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { capturePoint, indexPoint, openDisk } from '../daemon/prestage/point.js'
import { qemuAvailable, runInGuest } from '../scripts/vm/guest-runner.js'

const MiB = 1 << 20
const SIZE = 64 * MiB
const BS = 4096
const GUEST_TIMEOUT_MS = 300_000

t.setTimeout(GUEST_TIMEOUT_MS + 60_000)
if (process.env.OSFARM_IN_GUEST === '1') await guest()
else await host()

async function host (): Promise<void> {
  const noQemu = !await qemuAvailable() && 'qemu-system-x86_64 is not installed; the LVM guest test needs it'
  t.test('prestage points on LVM inside a QEMU guest', { skip: noQemu, timeout: GUEST_TIMEOUT_MS + 60_000 }, async t => {
    const r = await runInGuest({
      command: `exec ${process.execPath} ${fileURLToPath(import.meta.url)}`,
      disks: [{ size: 1024 * MiB }],
      timeoutMs: GUEST_TIMEOUT_MS,
      onStdout: process.env.OSFARM_TEST_VERBOSE ? s => process.stderr.write(s) : undefined
    })
    t.comment(`guest ${r.kernelVersion}: done after ${r.totalMs} ms`)
    const lines = r.stdout.split('\n')
    const results = lines.map(l => /^ {4}(not )?ok \d+ - (.*?)(?: # time=.*)?$/.exec(l)).filter(Boolean) as RegExpExecArray[]
    t.ok(results.length > 0, 'the guest reported results')
    for (const m of results) t.ok(!m[1], `guest: ${m[2]}`)
    for (const l of lines) if (l.startsWith('    # ')) t.comment(`guest: ${l.slice(6)}`)
    t.equal(r.exitCode, 0, 'the guest run passed')
    if (r.exitCode !== 0) {
      t.comment(r.stdout.slice(-8000))
      t.comment(r.stderr.slice(-4000))
    }
  })
}

async function lvmRun (args: string[]): Promise<void> {
  await execa('lvm', [args[0]!, '--config', NO_UDEV_CONFIG, ...args.slice(1)], { env: { DM_DISABLE_UDEV: '1', LVM_SUPPRESS_FD_WARNINGS: '1' }, timeout: 60_000 })
}

// Writes `n` distinct pseudo-random blocks of `device` with new data.
async function scribble (device: string, n: number, seed: string): Promise<void> {
  const fh = await fs.open(device, 'r+')
  try {
    const picked = new Set<number>()
    for (let k = 0; picked.size < n; k++) picked.add(createHash('sha256').update(`${seed}/${k}`).digest().readUInt32BE(0) % (SIZE / BS))
    for (const i of picked) {
      const block = Buffer.alloc(BS)
      for (let o = 0; o < BS; o += 32) createHash('sha256').update(`${seed}:${i}:${o}`).digest().copy(block, o)
      await fh.write(block, 0, BS, i * BS)
    }
    await fh.sync()
  } finally {
    await fh.close()
  }
}

async function guest (): Promise<void> {
  const [disk] = (process.env.OSFARM_VM_DISKS ?? '').split(' ')
  if (!disk) throw new Error('the guest needs a disk')
  const opts: LvmStoreOptions = { vg: 'osfarm', pool: 'layers', pvs: [disk], udev: false }

  t.test('points of a thin LV are thin snapshots indexed from thin_delta', async t => {
    const store = await createLvmStore(opts)
    const hasher = new BlockHasher(1)
    t.teardown(async () => { await hasher.close(); await store.close() })

    // The image: three quarters of its blocks data.
    const img = await store.prepare('image', { size: SIZE })
    const fh = await fs.open(img.path, 'r+')
    for (let i = 0; i < SIZE / BS; i++) {
      if (i % 4 === 3) continue
      await fh.write(createHash('sha512').update(`img${i}`).digest().toString('hex').repeat(32).slice(0, BS), i * BS)
    }
    await fh.sync()
    await fh.close()
    const image = await store.commit('image')
    const imageManifest = await hasher.indexFile(image.path, { size: SIZE })

    // The VM's disk: a thin snapshot of the image's LV, not the store's (no osfarm tag).
    await lvmRun(['lvcreate', '-y', '-s', '-K', '-p', 'rw', '-n', 'vm1', `osfarm/${lvName('image')}`])
    const device = '/dev/osfarm/vm1'
    await scribble(device, 300, 'one')

    const d1 = await openDisk(device)
    t.equal(d1.kind, 'device')
    const p1 = await capturePoint(store, d1, 'pre-t-1')
    t.equal(p1.capture, 'thin-snapshot', 'the point is a thin snapshot, not a copy')
    const i1 = await indexPoint({ store, hasher, blockSize: BS, volume: p1.volume, size: SIZE, prev: { manifest: imageManifest, volume: image } })
    t.equal(i1.index, 'thin-delta', 'indexed from thin_delta against the image')
    const full1 = await hasher.indexFile(p1.volume.path, { size: SIZE })
    t.ok(i1.manifest.root.equals(full1.root), 'its manifest equals a full index of the point')
    t.ok(i1.changedBlocks <= 300 && i1.changedBlocks >= 290, `changed blocks: ${i1.changedBlocks} of 300 written`)
    t.ok(i1.hashedBlocks < SIZE / BS / 2, `hashed ${i1.hashedBlocks} of ${SIZE / BS} blocks (pool chunks around the writes)`)
    t.comment(`point 1: ${i1.hashedBlocks} blocks hashed for 300 written`)

    // More writes; the next point against the first.
    await scribble(device, 100, 'two')
    const p2 = await capturePoint(store, await openDisk(device), 'pre-t-2')
    const i2 = await indexPoint({ store, hasher, blockSize: BS, volume: p2.volume, size: SIZE, prev: { manifest: i1.manifest, volume: p1.volume } })
    t.equal(i2.index, 'thin-delta', 'the sync point is indexed from thin_delta against the last point')
    const full2 = await hasher.indexFile(p2.volume.path, { size: SIZE })
    t.ok(i2.manifest.root.equals(full2.root), 'its manifest equals a full index of the point')
    t.ok(i2.changedBlocks <= 100, `changed since point 1: ${i2.changedBlocks}`)
    t.ok(i2.hashedBlocks < i1.hashedBlocks, `hashed ${i2.hashedBlocks} blocks`)
    t.comment(`point 2: ${i2.hashedBlocks} blocks hashed for 100 written`)

    // The foreign LV is untouched by the store.
    t.notOk((await store.list()).some(v => v.key === 'vm1'), 'the VM disk is not a store volume')
    for (const k of ['pre-t-2', 'pre-t-1', 'image']) await store.remove(k)
    await lvmRun(['lvremove', '-y', 'osfarm/vm1'])
  })
}
