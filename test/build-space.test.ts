// Running out of space during a build names the right culprit: the image's own filesystem full
// is SIZE_TOO_SMALL (the spec's size), the host filesystem under the data dir full is
// STORE_FULL (the host), and either way the daemon goes on serving with nothing left behind.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir } from '../testing/daemon.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const dir = await tempDir('osfarm-build-space-')
const host = path.join(dir, 'host')
await fs.mkdir(host)
// A small host filesystem for the data dir (the store's volumes and the build's scratch).
await execa('mount', ['-t', 'tmpfs', '-o', 'size=160m', 'tmpfs', host])
t.teardown(async () => {
  await execa('umount', ['--lazy', host], { reject: false })
  await fs.rm(dir, { recursive: true, force: true })
})
const d = await startDaemon({ dir, args: ['--data', path.join(host, 'data')] })
t.teardown(() => d.stop())
const tarball = await busyboxRootfs(path.join(dir, 'tree'), path.join(dir, 'rootfs.tar'))

async function build (name: string, size: string, mib: number): Promise<{ exitCode: number, stderr: string }> {
  const spec = path.join(dir, `${name}.json`)
  await fs.writeFile(spec, JSON.stringify({ name, flavour: 'rootfs', rootfs: tarball, size, scripts: [`dd if=/dev/urandom of=/fill bs=1M count=${mib}`] }))
  return d.ctl('build', spec, '--wait')
}

t.test('the image full: SIZE_TOO_SMALL', async t => {
  const r = await build('small', '40M', 60)
  t.equal(r.exitCode, 73, r.stderr.trim())
  t.match(r.stderr, /SIZE_TOO_SMALL/)
})

t.test('the host full: STORE_FULL, naming the host\'s path', async t => {
  const r = await build('big', '1G', 400)
  t.equal(r.exitCode, 73, r.stderr.trim())
  t.match(r.stderr, /STORE_FULL: .*host filesystem of .*is full/)
})

t.test('the daemon serves on, and the failed layers are gone', async t => {
  t.equal((await d.ctl('status')).exitCode, 0)
  const left = (await fs.readdir(path.join(host, 'data', 'build'))).filter(n => /^(mnt|base)-/.test(n))
  t.same(left, [], 'no scratch left')
  const { stdout } = await execa('df', ['--output=used', '-B1M', host])
  t.ok(Number(stdout.split('\n')[1]) < 100, `the host filesystem is not left full (${stdout.split('\n')[1]!.trim()} MiB used)`)
})
