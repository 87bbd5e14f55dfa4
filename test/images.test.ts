// Import, list, verify and export through the real osfarmd and osfarmctl.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon } from '../testing/daemon.js'
import { allocatedBytes, makeImage } from '../testing/images.js'

t.test('import → list → verify → export raw and qcow2', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const src = path.join(d.dir, 'src.img')
  // 600 blocks of 4 KiB plus a 777-byte tail: not a multiple of the block size.
  const data = await makeImage(src, { blocks: 600, tail: 777 })

  const imported = await d.ctlJson('image', 'import', src, '--name', 'gen', '--label', 'role=web, tier=1')
  t.equal(imported.name, 'gen')
  t.same(imported.labels, ['role=web', 'tier=1'])
  t.equal(imported.size, data.length)
  t.equal(imported.blocks, 601)
  t.equal(imported.zeroBlocks, 240, '4 of every 10 blocks are zero')

  const list = await d.ctlJson('image', 'ls')
  t.equal(list.length, 1)
  for (const key of ['id', 'name', 'size', 'root', 'blockSize', 'createdAt']) t.ok(key in list[0], `image ls --json has ${key}`)
  t.equal(list[0].blockSize, 4096)
  t.match(list[0].root, /^[0-9a-f]{64}$/)

  const verified = await d.ctlJson('image', 'verify', 'gen')
  t.same({ ok: verified.ok, badBlocks: verified.badBlocks }, { ok: true, badBlocks: [] })

  const raw = path.join(d.dir, 'out.raw')
  const r1 = await d.ctl('image', 'export', imported.id.slice(0, 6), '-o', raw)
  t.equal(r1.exitCode, 0, r1.stderr)
  t.ok((await fs.readFile(raw)).equals(data), 'raw export is byte-identical')
  // Only non-zero blocks take space (plus a little filesystem metadata): zero runs are holes.
  const dataBytes = (imported.blocks - imported.zeroBlocks) * 4096
  t.ok(await allocatedBytes(raw) <= dataBytes + 65536, `raw export is sparse (${await allocatedBytes(raw)} bytes allocated for ${dataBytes} of data)`)

  const qcow = path.join(d.dir, 'out.qcow2')
  const r2 = await d.ctl('image', 'export', 'gen', '-o', qcow, '--format', 'qcow2')
  t.equal(r2.exitCode, 0, r2.stderr)
  const cmp = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, qcow], { reject: false })
  t.equal(cmp.exitCode, 0, `qemu-img compare: ${cmp.stdout}`)

  const shown = await d.ctlJson('image', 'show', 'gen')
  t.equal(shown.root, imported.root)

  const jobs = await d.ctlJson('job', 'ls')
  t.same(jobs.map((j: any) => [j.kind, j.state]), [['import', 'done'], ['verify', 'done'], ['export', 'done'], ['export', 'done']])

  const rm = await d.ctl('image', 'rm', 'gen')
  t.equal(rm.exitCode, 0)
  t.same(await d.ctlJson('image', 'ls'), [])
  const volumes = await fs.readdir(path.join(d.dataDir, 'volumes'))
  t.same(volumes, [], 'removing the image frees its volume')
})

t.test('bad input gets a clear error and leaves the catalog untouched', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const good = path.join(d.dir, 'good.img')
  await makeImage(good, { blocks: 50 })
  await d.ctlJson('image', 'import', good, '--name', 'keep')
  const before = await d.ctlJson('image', 'ls')

  const empty = path.join(d.dir, 'empty.img')
  await fs.writeFile(empty, '')
  const fifo = path.join(d.dir, 'fifo')
  await execa('mkfifo', [fifo])

  const cases: Array<[string, string[], string, number]> = [
    ['missing file', ['image', 'import', path.join(d.dir, 'nope.img'), '--name', 'a'], 'SOURCE_INVALID', 66],
    ['a directory', ['image', 'import', d.dir, '--name', 'b'], 'SOURCE_INVALID', 66],
    ['a FIFO', ['image', 'import', fifo, '--name', 'c'], 'SOURCE_INVALID', 66],
    ['a 0-byte file', ['image', 'import', empty, '--name', 'd'], 'SOURCE_EMPTY', 65],
    ['a taken name', ['image', 'import', good, '--name', 'keep'], 'NAME_IN_USE', 73],
    ['a bad name', ['image', 'import', good, '--name', '../x'], 'BAD_PARAMS', 64],
    ['a bad label', ['image', 'import', good, '--name', 'e', '--label', 'no-equals'], 'BAD_PARAMS', 64],
    ['unknown image id', ['image', 'show', 'feedfacefeed'], 'IMAGE_NOT_FOUND', 66],
    ['verify unknown id', ['image', 'verify', 'nothere'], 'IMAGE_NOT_FOUND', 66],
    ['rm unknown id', ['image', 'rm', 'nothere'], 'IMAGE_NOT_FOUND', 66],
    ['export to a missing directory', ['image', 'export', 'keep', '-o', path.join(d.dir, 'no/such/dir/x.raw')], 'TARGET_UNWRITABLE', 73],
    ['export onto a directory', ['image', 'export', 'keep', '-o', d.dir], 'TARGET_UNWRITABLE', 73],
    ['export into /proc', ['image', 'export', 'keep', '-o', '/proc/osfarm-test.raw'], 'TARGET_UNWRITABLE', 73],
    ['unknown job', ['job', 'show', 'abc'], 'JOB_NOT_FOUND', 66]
  ]
  for (const [what, args, code, exit] of cases) {
    const r = await d.ctl(...args)
    t.equal(r.exitCode, exit, `${what}: exit code`)
    t.match(r.stderr, new RegExp(`^osfarmctl: ${code}: `), `${what}: ${r.stderr.trim()}`)
  }
  t.same(await d.ctlJson('image', 'ls'), before, 'catalog untouched')
  t.same((await fs.readdir(path.join(d.dataDir, 'volumes'))).length, 1, 'no stray volumes')
  t.same(await fs.readdir(d.dir).then(f => f.filter(n => n.includes('.osfarm-'))), [], 'no stray export temp files')
  const verified = await d.ctlJson('image', 'verify', 'keep')
  t.ok(verified.ok, 'the other image still verifies')
})

t.test('a refused connection prints a hint', async t => {
  const r = await execa(process.execPath, [(await import('../testing/daemon.js')).OSFARMCTL, '--socket', '/tmp/osfarm-no-such.sock', 'status'], { reject: false })
  t.equal(r.exitCode, 69)
  t.match(r.stderr, /DAEMON_UNREACHABLE: .*is osfarmd running\? Try: systemctl status osfarmd/)
})
