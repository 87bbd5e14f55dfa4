// The bootable example is built for real, exported for direct kernel boot, and booted in QEMU
// (TCG): a unit inside the image prints a marker on the serial console and powers off.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { Builder } from '../daemon/builder/builder.js'
import { parseSpec } from '../daemon/builder/spec.js'
import { exportBoot, qemuBootArgs, readBootInfo } from '../daemon/builder/boot-export.js'
import { createFileStore } from '../daemon/store/file/file-store.js'
import { specResolver } from '../testing/sources.js'

const MARKER = 'OSFARM-BOOT-OK'
const BOOT_TIMEOUT_MS = 5 * 60_000
const EXAMPLES = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../examples')

t.test('the bootable example boots and prints its marker on the serial console', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-boot-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const store = await createFileStore({ dir: path.join(dir, 'store') })
  const builder = new Builder({ store, workDir: path.join(dir, 'work') })
  const spec = await (await specResolver(dir))(parseSpec(await fs.readFile(path.join(EXAMPLES, 'bookworm-boot.xml'), 'utf8'), 'xml'))
  t.equal(spec.bootable, true)

  const built = await builder.build(spec)
  t.same(built.layers.map(l => l.step), ['base', 'packages', 'files', 'scripts', 'boot'])
  const disk = (await store.stat(built.key))!.path
  const info = await readBootInfo(disk)
  t.match(info?.kernel, /^\/boot\/vmlinuz-/)
  t.match(info?.append, /root=\/dev\/vda/)

  const boot = await exportBoot(disk, path.join(dir, 'boot'))
  const kernel = await fs.stat(boot.kernelFile)
  const initrd = await fs.stat(boot.initrdFile)
  t.ok(kernel.size > 1 << 20, `kernel copied out (${kernel.size} bytes)`)
  t.ok(initrd.size > 1 << 20 && initrd.size < 40 << 20, `a small initrd (${initrd.size} bytes)`)

  const started = performance.now()
  const qemu = execa('qemu-system-x86_64', qemuBootArgs(disk, boot, { memoryMiB: 768 }), { reject: false, stdin: 'ignore', timeout: BOOT_TIMEOUT_MS })
  let serial = ''
  let seenAt: number | undefined
  qemu.stdout!.on('data', (chunk: Buffer) => {
    serial += chunk.toString('latin1')
    if (seenAt === undefined && serial.includes(MARKER)) seenAt = performance.now() - started
  })
  const result = await qemu
  await fs.writeFile(path.join(os.tmpdir(), 'osfarm-boot-console.log'), serial)
  t.ok(seenAt !== undefined, `the marker appeared on the serial console${seenAt ? ` after ${(seenAt / 1000).toFixed(1)} s` : ` (console in ${os.tmpdir()}/osfarm-boot-console.log)`}`)
  t.equal(result.timedOut, false, 'the guest powered itself off')
  t.comment(`boot to power-off: ${((performance.now() - started) / 1000).toFixed(1)} s under TCG`)
  const after = await store.stat(built.key)
  t.equal(after?.kind, 'committed', 'the image was booted with snapshot=on and is unchanged')
  const loops = await execa('losetup', ['-a'], { reject: false })
  t.notMatch(String(loops.stdout), dir, 'no loop device left')
})
