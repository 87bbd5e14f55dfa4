// osfarmd's life: clean stop, one daemon per data dir, stale sockets, bad configuration.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { OSFARMD, startDaemon, tempDir } from '../testing/daemon.js'

t.test('SIGTERM removes the socket and closes the catalog; a restart finds the images', async t => {
  const d = await startDaemon()
  const src = path.join(d.dir, 'a.img')
  await fs.writeFile(src, Buffer.alloc(8192, 7))
  await d.ctlJson('image', 'import', src, '--name', 'a')
  t.equal(await d.stop('SIGTERM'), 0, 'exit code 0')
  await t.rejects(fs.stat(d.socket), { code: 'ENOENT' }, 'socket removed')
  t.match(d.output(), /osfarmd stopped/)
  const again = await d.restart()
  t.teardown(() => again.stop())
  const list = await again.ctlJson('image', 'ls')
  t.same(list.map((i: any) => i.name), ['a'])
  t.equal((await again.ctlJson('status')).images, 1)
})

t.test('SIGINT stops cleanly too', async t => {
  const d = await startDaemon()
  t.equal(await d.stop('SIGINT'), 0)
  await t.rejects(fs.stat(d.socket), { code: 'ENOENT' })
})

t.test('a second daemon on the same data dir refuses to start', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const r = await execa(process.execPath, [OSFARMD, '--data', d.dataDir, '--socket', path.join(d.dir, 'other.sock')], { reject: false, timeout: 20_000 })
  t.equal(r.exitCode, 75)
  t.match(r.stderr, /DAEMON_ALREADY_RUNNING: the catalog in .* is locked by another osfarmd/)
  const r2 = await execa(process.execPath, [OSFARMD, '--data', path.join(d.dir, 'data2'), '--socket', d.socket], { reject: false, timeout: 20_000 })
  t.equal(r2.exitCode, 75)
  t.match(r2.stderr, /DAEMON_ALREADY_RUNNING: another osfarmd is listening on/)
  t.equal((await d.ctl('status')).exitCode, 0, 'the first daemon still serves')
})

t.test('a stale socket from a killed daemon is replaced', async t => {
  const d = await startDaemon()
  await d.stop('SIGKILL')
  t.ok((await fs.lstat(d.socket)).isSocket(), 'the killed daemon left its socket')
  const again = await d.restart()
  t.teardown(() => again.stop())
  t.equal((await again.ctl('status')).exitCode, 0)
})

t.test('bad configuration is refused with the key named', async t => {
  const dir = await tempDir()
  const run = (args: string[]) => execa(process.execPath, [OSFARMD, '--data', path.join(dir, 'd'), '--socket', path.join(dir, 's'), ...args], { reject: false, timeout: 20_000 })
  const cfg = path.join(dir, 'c.json')
  await fs.writeFile(cfg, JSON.stringify({ blockSize: 1000 }))
  let r = await run(['--config', cfg])
  t.equal(r.exitCode, 78)
  t.match(r.stderr, /BAD_CONFIG: .*c\.json: blockSize: block size must be a power of two/)
  await fs.writeFile(cfg, JSON.stringify({ dataDirr: '/x' }))
  r = await run(['--config', cfg])
  t.match(r.stderr, /BAD_CONFIG: .*unknown key "dataDirr"/)
  await fs.writeFile(cfg, JSON.stringify({ serveCpuShare: 1.5 }))
  r = await run(['--config', cfg])
  t.match(r.stderr, /BAD_CONFIG: .*serveCpuShare must be a share of the cores from 0 to 1/)
  await fs.writeFile(cfg, '{ not json')
  r = await run(['--config', cfg])
  t.match(r.stderr, /BAD_CONFIG: .* is not valid JSON/)
  r = await run(['--store', 'lvm'])
  t.match(r.stderr, /BAD_CONFIG: store "lvm" needs lvm: \{ "vg"/)
  await fs.writeFile(cfg, JSON.stringify({ store: 'lvm', lvm: { vg: 'vg0', pool: 'p', pvs: ['sda'] } }))
  r = await run(['--config', cfg])
  t.match(r.stderr, /BAD_CONFIG: .*lvm\.pvs must be a list of \/dev paths/)
  r = await run(['--config', path.join(dir, 'missing.json')])
  t.match(r.stderr, /BAD_CONFIG: cannot read .*missing\.json: ENOENT/)
  await fs.writeFile(cfg, JSON.stringify({ logLevel: 'debug', hashThreads: 1 }))
  const d = await startDaemon({ dir, args: ['--config', cfg] })
  t.teardown(() => d.stop())
  t.match(d.output(), /level=debug|osfarmd ready/, 'a good config starts')
})
