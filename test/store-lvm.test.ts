// The LVM backend, for real: this file boots a QEMU guest (scripts/vm) with Debian's kernel and
// runs itself inside it (OSFARM_IN_GUEST=1), where LVM has device-mapper and three virtio disks.
// Inside: the shared LayerStore suite, faults (missing VG and pool, full pool, name collision,
// a PV holding a filesystem, a process killed between snapshot and commit) and an import whose manifest root must equal the
// one the file backend gave the same bytes on the host. The host re-reports the guest's results.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { OsfarmError } from '../protocol/errors.js'
import { createLvmStore, lvName, type LvmStoreOptions } from '../daemon/store/lvm/lvm-store.js'
import { NO_UDEV_CONFIG } from '../daemon/store/lvm/lvm.js'
import { createFileStore } from '../daemon/store/file/file-store.js'
import { BlockHasher } from '../daemon/blocks/block-hasher.js'
import { toHex } from '../daemon/blocks/hash.js'
import { layerStoreSuite, readAt, rejectsCode, writeAt } from '../daemon/store/layer-store-suite.js'
import { qemuAvailable, runInGuest } from '../scripts/vm/guest-runner.js'

const MiB = 1 << 20
const SIZE = 64 * MiB
const IMAGE_SIZE = 32 * MiB
const GUEST_TIMEOUT_MS = 300_000
const CHUNK = 64 * 1024

t.setTimeout(GUEST_TIMEOUT_MS + 60_000)
if (process.env.OSFARM_IN_GUEST === '1') await guest()
else await host()

// ─── on the host ────────────────────────────────────────────────────────────────────────────

async function host (): Promise<void> {
  const misc = await fs.readFile('/proc/misc', 'utf8').catch(() => '')
  t.test('without device-mapper the backend says it is unavailable', { skip: /device-mapper/.test(misc) && 'this kernel has device-mapper' }, async t => {
    await rejectsCode(t, createLvmStore({ vg: 'osfarm', pool: 'layers' }), 'BACKEND_UNAVAILABLE', 'createLvmStore on this host')
  })

  const noQemu = !await qemuAvailable() && 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86); the LVM guest test needs it'
  t.test('lvm backend inside a QEMU guest', { skip: noQemu, timeout: GUEST_TIMEOUT_MS + 60_000 }, async t => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-lvm-test-'))
    t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
    const { image, root } = await importOnFileBackend(dir)
    t.comment(`file backend on the host: image ${IMAGE_SIZE} bytes, manifest root ${root}`)

    const r = await runInGuest({
      command: `exec ${process.execPath} ${fileURLToPath(import.meta.url)}`,
      disks: [{ size: 4 * 1024 * MiB }, { size: 64 * MiB }, { size: 16 * MiB }],
      env: { OSFARM_IMPORT_IMAGE: image, OSFARM_IMPORT_ROOT: root },
      timeoutMs: GUEST_TIMEOUT_MS,
      // OSFARM_TEST_VERBOSE=1 shows the guest's TAP as it runs.
      onStdout: process.env.OSFARM_TEST_VERBOSE ? s => process.stderr.write(s) : undefined
    })
    t.comment(`guest ${r.kernelVersion}: command started after ${r.bootMs} ms, done after ${r.totalMs} ms`)
    const results = parseTap(r.stdout)
    t.ok(results.length > 0, 'the guest reported results')
    for (const res of results) t.ok(res.ok, `guest: ${res.name}`)
    t.equal(r.exitCode, 0, 'the guest run passed')
    if (r.exitCode !== 0 || results.some(res => !res.ok)) {
      t.comment(r.stdout.slice(-20_000))
      t.comment(r.stderr.slice(-4000))
      t.comment(r.console.slice(-4000))
    }
  })
}

// An ext4 image made from generated files, imported into the file backend the way an import
// does (holes for zero chunks), committed and indexed.
async function importOnFileBackend (dir: string): Promise<{ image: string, root: string }> {
  const tree = path.join(dir, 'tree')
  await fs.mkdir(path.join(tree, 'etc'), { recursive: true })
  await fs.writeFile(path.join(tree, 'etc', 'hostname'), 'osfarm-lvm-test\n')
  await fs.writeFile(path.join(tree, 'blob'), randomBytes(3 * MiB))
  for (let i = 0; i < 50; i++) await fs.writeFile(path.join(tree, 'etc', `file-${i}`), `line ${i}\n`.repeat(i * 20))
  const image = path.join(dir, 'image.ext4')
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, '-U', 'clear', '-E', 'hash_seed=00000000-0000-0000-0000-000000000001',
    image, `${IMAGE_SIZE / 1024}k`], { env: { E2FSPROGS_FAKE_TIME: '1700000000' } })
  const store = await createFileStore({ dir: path.join(dir, 'store') })
  const hasher = new BlockHasher(2)
  try {
    const v = await store.prepare('imported', { size: IMAGE_SIZE })
    await copyNonZero(image, v.path)
    const c = await store.commit('imported')
    // The size is given because deviceSize() finds a block device's size through the realpath's
    // basename in /sys/class/block, and without udev /dev/mapper/* are nodes, not dm-N links.
    const m = await hasher.indexFile(c.path, { size: c.size })
    return { image, root: toHex(m.root) }
  } finally {
    await hasher.close()
    await store.close()
  }
}

// Copies a file onto a volume chunk by chunk, skipping all-zero chunks (they stay holes, or
// unprovisioned thin blocks), as an import does.
async function copyNonZero (from: string, to: string): Promise<number> {
  const src = await fs.open(from, 'r')
  const dst = await fs.open(to, 'r+')
  let written = 0
  try {
    const buf = Buffer.alloc(CHUNK)
    const zero = Buffer.alloc(CHUNK)
    for (let at = 0; ; at += CHUNK) {
      const { bytesRead } = await src.read(buf, 0, CHUNK, at)
      if (bytesRead === 0) break
      const part = buf.subarray(0, bytesRead)
      if (!part.equals(zero.subarray(0, bytesRead))) {
        await dst.write(part, 0, bytesRead, at)
        written += bytesRead
      }
    }
    await dst.sync()
  } finally {
    await src.close()
    await dst.close()
  }
  return written
}

interface TapResult { ok: boolean, name: string }

// The guest's top-level tests and their direct subtests, named "parent > child".
function parseTap (text: string): TapResult[] {
  const out: TapResult[] = []
  const stack: string[] = []
  for (const line of text.split('\n')) {
    const sub = /^( *)# Subtest: (.*)$/.exec(line)
    if (sub) { stack[sub[1]!.length / 4] = sub[2]!; continue }
    const m = /^( *)(not )?ok \d+ - (.*?)(?: # (?:time=|SKIP|TODO).*)?$/.exec(line)
    if (!m) continue
    const depth = m[1]!.length / 4
    if (depth > 1) continue
    const name = depth === 0 ? m[3]! : `${stack[0]} > ${m[3]}`
    out.push({ ok: !m[2], name })
  }
  return out
}

// ─── in the guest ───────────────────────────────────────────────────────────────────────────

async function guest (): Promise<void> {
  const [disk, smallDisk, fsDisk] = (process.env.OSFARM_VM_DISKS ?? '').split(' ')
  if (!disk || !smallDisk || !fsDisk) throw new Error('the guest needs three disks')
  const main: LvmStoreOptions = { vg: 'osfarm', pool: 'layers', pvs: [disk], udev: false }

  t.test('shared LayerStore suite', async t => {
    layerStoreSuite(t, { open: () => createLvmStore(main), size: SIZE })
  })

  t.test('a missing VG or pool is a configuration error', async t => {
    await rejectsCode(t, createLvmStore({ vg: 'no-such-vg', pool: 'layers', udev: false }), 'BAD_CONFIG', 'a VG that does not exist')
    await rejectsCode(t, createLvmStore({ vg: 'osfarm', pool: 'no-such-pool', udev: false }), 'BAD_CONFIG', 'a thin pool that does not exist')
    await rejectsCode(t, createLvmStore({ vg: 'bad/name', pool: 'layers', udev: false }), 'BAD_CONFIG', 'a VG name LVM would refuse')
    await rejectsCode(t, createLvmStore({ ...main, maxFillPercent: 0 }), 'BAD_CONFIG', 'a fill level of 0%')
    const store = await createLvmStore(main)
    t.teardown(() => store.close())
    await rawLvm(['lvcreate', '-y', '-V', '8m', '-T', 'osfarm/layers', '-n', 'not-a-pool'])
    await rejectsCode(t, createLvmStore({ vg: 'osfarm', pool: 'not-a-pool', udev: false }), 'BAD_CONFIG', 'an LV that is not a thin pool')
    await rawLvm(['lvremove', '-y', 'osfarm/not-a-pool'])
  })

  t.test('a PV that holds a filesystem is not wiped', async t => {
    await execa('mkfs.ext4', ['-q', '-F', fsDisk])
    await rejectsCode(t, createLvmStore({ vg: 'wiped', pool: 'p', pvs: [fsDisk], udev: false }), 'BAD_CONFIG', 'making a VG on it')
    const probe = await execa('blkid', ['-o', 'value', '-s', 'TYPE', fsDisk], { reject: false })
    t.equal(probe.stdout.trim(), 'ext4', 'the filesystem is still there')
  })

  t.test('an LV name collision is refused and a foreign LV is never touched', async t => {
    const store = await createLvmStore(main)
    t.teardown(() => store.close())
    // Someone else's LV, without our tag, under the name our key would take.
    await rawLvm(['lvcreate', '-y', '-V', '8m', '-T', 'osfarm/layers', '-n', lvName('foreign')])
    await rejectsCode(t, store.prepare('foreign', { size: SIZE }), 'VOLUME_EXISTS', 'preparing a key whose LV name is taken')
    t.equal(await store.stat('foreign'), undefined, 'the foreign LV is not a volume')
    t.notOk((await store.list()).some(v => v.key === 'foreign'), 'nor listed')
    t.same(await store.recover(), [], 'recover leaves a writable foreign LV alone')
    t.ok(await lvExists('osfarm', lvName('foreign')), 'it is still there')
    await rawLvm(['lvremove', '-y', `osfarm/${lvName('foreign')}`])
  })

  t.test('a process killed between snapshot and commit leaves an orphan the next start removes', async t => {
    const store = await createLvmStore(main)
    const base = await store.prepare('kill-base', { size: SIZE })
    await writeAt(base.path, 0, Buffer.from('base layer'))
    await store.commit('kill-base')
    await store.close()
    // Another process snapshots and writes, then dies by SIGKILL: no commit, no cleanup.
    const storeModule = new URL('../daemon/store/lvm/lvm-store.js', import.meta.url).href
    const child = await execa(process.execPath, ['--input-type=module', '-e', `
      import fs from 'node:fs/promises'
      import { createLvmStore } from ${JSON.stringify(storeModule)}
      const store = await createLvmStore(${JSON.stringify(main)})
      const v = await store.prepare('kill-child', { parent: 'kill-base' })
      const fh = await fs.open(v.path, 'r+')
      await fh.write(Buffer.from('half a layer'), 0, 12, 0)
      process.kill(process.pid, 'SIGKILL')
    `], { reject: false, timeout: 60_000 })
    t.equal(child.signal, 'SIGKILL', 'the writer died by SIGKILL')
    // And a crash inside prepare, after lvcreate and before activation, leaves this:
    await rawLvm(['lvcreate', '-y', '-s', '-n', lvName('kill-mid'), '--addtag', 'osfarm', `osfarm/${lvName('kill-base')}`])

    const next = await createLvmStore(main)
    t.teardown(() => next.close())
    t.same((await next.recover()).sort(), ['kill-child', 'kill-mid'], 'recover() reports both orphans')
    t.notOk(await lvExists('osfarm', lvName('kill-child')), 'the killed writer\'s LV is gone')
    t.notOk(await lvExists('osfarm', lvName('kill-mid')), 'the half-made LV is gone')
    const kept = await next.stat('kill-base')
    t.equal(kept?.kind, 'committed', 'the committed parent stays')
    t.same(await readAt(kept!.path, 0, 10), Buffer.from('base layer'), 'with its bytes')
    await next.remove('kill-base')
  })

  t.test('a full thin pool: refused above the fill level, writes fail fast at 100%, a vanished pool', async t => {
    const opts: LvmStoreOptions = { vg: 'small', pool: 'tiny', pvs: [smallDisk], udev: false, maxFillPercent: 50 }
    const store = await createLvmStore(opts)
    t.teardown(() => store.close())
    const v = await store.prepare('fill', { size: 256 * MiB })
    t.equal(v.size, 256 * MiB, 'a thin volume may be larger than its pool')
    const poolBytes = (await store.usage()).bytesFree
    await writeAt(v.path, 0, Buffer.alloc(Math.ceil(poolBytes * 0.6), 0xa5))
    const u = await store.usage()
    t.ok(u.bytesUsed / (u.bytesUsed + u.bytesFree) > 0.5, `pool above 50% (${u.bytesUsed} of ${u.bytesUsed + u.bytesFree})`)
    await rejectsCode(t, store.prepare('more', { size: SIZE }), 'STORE_FULL', 'a new volume above the fill level')
    await store.commit('fill')
    await rejectsCode(t, store.prepare('layer', { parent: 'fill' }), 'STORE_FULL', 'a snapshot above the fill level')
    await store.remove('fill')

    const w = await store.prepare('overflow', { size: 256 * MiB }).catch(err => err)
    if (w instanceof OsfarmError) {
      // Freed thin space is reusable at once, so this only fails if the pool did not recover.
      t.fail(`cannot prepare after freeing: ${w.message}`)
    } else {
      const started = Date.now()
      await t.rejects(writeAt(w.path, 0, Buffer.alloc(Math.ceil(poolBytes * 1.2), 0x5a)), 'writing past the pool\'s end fails')
      t.ok(Date.now() - started < 30_000, `and fails fast (${Date.now() - started} ms), not queued`)
      const full = await store.usage()
      t.ok(full.bytesFree / (full.bytesUsed + full.bytesFree) < 0.02, 'the pool is full')
      await rejectsCode(t, store.prepare('after', { size: SIZE }), 'STORE_FULL', 'a new volume on a full pool')
      await store.remove('overflow')
    }

    await rawLvm(['lvremove', '-y', 'small/tiny'])
    await rejectsCode(t, store.prepare('gone', { size: SIZE }), 'BAD_CONFIG', 'a pool removed under a running store')
    await rejectsCode(t, createLvmStore({ ...opts, pvs: undefined }), 'BAD_CONFIG', 'reopening without the pool')
  })

  t.test('an imported image on LVM indexes and exports byte-identical to the file backend', async t => {
    const image = process.env.OSFARM_IMPORT_IMAGE
    const expected = process.env.OSFARM_IMPORT_ROOT
    if (!image || !expected) return t.plan(0, 'no image from the host (run through the host test)')
    const store = await createLvmStore(main)
    const hasher = new BlockHasher(1)
    t.teardown(async () => { await hasher.close(); await store.close() })
    const source = await fs.readFile(image)
    const v = await store.prepare('import-1', { size: source.length })
    t.equal(v.size, source.length, 'volume size is the image size')
    const written = await copyNonZero(image, v.path)
    const c = await store.commit('import-1')
    t.ok(c.allocated <= written + 4 * MiB, `zero chunks cost nothing: ${c.allocated} bytes allocated for ${written} non-zero of ${source.length}`)
    // The size is given because deviceSize() finds a block device's size through the realpath's
    // basename in /sys/class/block, and without udev /dev/mapper/* are nodes, not dm-N links.
    const m = await hasher.indexFile(c.path, { size: c.size })
    t.equal(m.size, source.length, 'indexed the whole block device')
    t.equal(toHex(m.root), expected, 'manifest root equals the file backend\'s')
    t.ok((await readAt(c.path, 0, source.length)).equals(source), 'exported bytes equal the source')

    const mnt = '/mnt/osfarm-import'
    await fs.mkdir(mnt, { recursive: true })
    await execa('mount', ['-t', 'ext4', '-o', 'ro,noload', c.path, mnt])
    t.equal(await fs.readFile(path.join(mnt, 'etc', 'hostname'), 'utf8'), 'osfarm-lvm-test\n', 'the image mounts and reads')
    await execa('umount', [mnt])

    await store.prepare('import-1-layer', { parent: 'import-1' })
    t.same(await store.changedBlocks!('import-1-layer', 'import-1'), [], 'a layer on the image starts with no changed blocks')
    await store.remove('import-1-layer')
    await store.remove('import-1')
  })
}

async function rawLvm (args: string[]): Promise<string> {
  const r = await execa('lvm', [args[0]!, '--config', NO_UDEV_CONFIG, ...args.slice(1)], {
    env: { DM_DISABLE_UDEV: '1', LVM_SUPPRESS_FD_WARNINGS: '1' }, timeout: 60_000
  })
  return r.stdout
}

async function lvExists (vg: string, lv: string): Promise<boolean> {
  const json = await rawLvm(['lvs', '--reportformat', 'json', '-o', 'lv_name', vg])
  return (JSON.parse(json).report[0].lv as Array<{ lv_name: string }>).some(r => r.lv_name === lv)
}
