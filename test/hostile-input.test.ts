// Hostile input to osfarmd, as root: each gets a clear code, the daemon keeps serving, its memory
// stays bounded (RSS printed), and nothing is left behind. Every wait is bounded.

import t from 'tap'
import { eventually } from '../testing/eventually.js'
import net from 'node:net'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { OSFARMCTL, startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { OsfarmClient } from '../client/client.js'
import { MAX_FRAME_BYTES, MAX_SPEC_BYTES } from '../protocol/rpc.js'
import { createExportTarget, openSource } from '../daemon/images/host-files.js'
import { copyNonZero } from '../daemon/images/block-copy.js'

const CTL_TIMEOUT_MS = 60_000

async function rssMiB (pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024
}

const waitFor = async (cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> => { await eventually('the condition', cond, { timeoutMs, intervalMs: 50 }) }

async function ctl (d: TestDaemon, ...args: string[]) {
  const r = await execa(process.execPath, [OSFARMCTL, '--socket', d.socket, ...args], { reject: false, timeout: CTL_TIMEOUT_MS })
  if (r.timedOut) throw new Error(`osfarmctl ${args.join(' ')} did not return`)
  return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 }
}

async function withConfig (config: Record<string, unknown>): Promise<TestDaemon> {
  const dir = await tempDir()
  const file = path.join(dir, 'osfarmd.json')
  await fs.writeFile(file, JSON.stringify(config))
  return startDaemon({ dir, args: ['--config', file] })
}

async function serving (t: { equal: (a: unknown, b: unknown, m: string) => unknown }, d: TestDaemon, what: string): Promise<void> {
  t.equal((await ctl(d, 'status')).exitCode, 0, `the daemon still serves after ${what}`)
}

t.test('specs: any spec under MAX_SPEC_BYTES reaches the daemon; over it, SPEC_INVALID at once; deep nesting is SPEC_INVALID', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const before = await rssMiB(d.proc.pid!)
  // 960 KB of quotes: the frame is twice that once escaped (it hung osfarmctl at a 1 MiB frame limit).
  const quotes = path.join(d.dir, 'quotes.json')
  await fs.writeFile(quotes, '{"name":"q","description":"' + '\\"'.repeat(480_000) + '"}')
  let r = await ctl(d, 'build', quotes)
  t.equal(r.exitCode, 65, '960 KB spec: answered (SPEC_INVALID for its content), no hang')
  t.match(r.stderr, /SPEC_INVALID/)
  // Control characters: the worst case of JSON escaping (6x), still under the frame limit.
  const controls = path.join(d.dir, 'controls.json')
  await fs.writeFile(controls, '\u0001'.repeat(MAX_SPEC_BYTES))
  r = await ctl(d, 'build', controls)
  t.equal(r.exitCode, 65, 'a max-size spec of control characters is SPEC_INVALID, not FRAME_TOO_LARGE')
  const big = path.join(d.dir, 'big.json')
  await fs.writeFile(big, ' '.repeat(MAX_SPEC_BYTES + 1))
  r = await ctl(d, 'build', big)
  t.equal(r.exitCode, 65, 'over the spec limit: SPEC_INVALID')
  t.match(r.stderr, /SPEC_INVALID.*over the limit of 1048576/)
  const deep = path.join(d.dir, 'deep.xml')
  await fs.writeFile(deep, '<image name="x">' + '<a>'.repeat(100_000) + '</a>'.repeat(100_000) + '</image>')
  r = await ctl(d, 'build', deep)
  t.equal(r.exitCode, 65, 'deep XML: SPEC_INVALID')
  t.match(r.stderr, /nested 17 elements deep/)
  t.notMatch(r.stderr, /INTERNAL|call stack/)
  const deepJson = path.join(d.dir, 'deep.json')
  await fs.writeFile(deepJson, '{"name":"x","labels":' + '['.repeat(200_000) + ']'.repeat(200_000) + '}')
  r = await ctl(d, 'build', deepJson)
  t.equal(r.exitCode, 65, 'deep JSON: SPEC_INVALID')
  await serving(t, d, 'hostile specs')
  const after = await rssMiB(d.proc.pid!)
  t.comment(`daemon RSS ${before.toFixed(1)} MiB before, ${after.toFixed(1)} MiB after`)
  t.ok(after - before < 256, 'RSS grew by less than 256 MiB')
})

t.test('frames: the client refuses an oversized request itself, and an id-null error fails the calls in flight', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const c = await OsfarmClient.connect(d.socket)
  await t.rejects(c.call('image.get', { id: 'a'.repeat(MAX_FRAME_BYTES) }), { code: 'FRAME_TOO_LARGE' })
  t.ok((await c.call('daemon.version', {})).version, 'the connection still works')
  c.close()
  // A server that answers every request with an id-null FRAME_TOO_LARGE, as osfarmd does for a
  // frame it cannot parse: the call fails with that code instead of waiting forever.
  const dir = await tempDir()
  const sock = path.join(dir, 'fake.sock')
  const fake = net.createServer(s => s.on('data', () => s.write(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: 'frame too large', data: { code: 'FRAME_TOO_LARGE' } } }) + '\n')))
  await new Promise<void>(resolve => fake.listen(sock, resolve))
  t.teardown(() => { fake.close() })
  const f = await OsfarmClient.connect(sock)
  await t.rejects(f.call('daemon.status', {}), { code: 'FRAME_TOO_LARGE' })
  f.close()
})

t.test('import sources: FIFOs, devices, directories and sockets are refused at once, the field named', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const fifo = path.join(d.dir, 'fifo')
  await execa('mkfifo', [fifo])
  const dir = path.join(d.dir, 'adir')
  await fs.mkdir(dir)
  for (const [src, why] of [[fifo, /FIFO/], ['/dev/zero', /character device/], [dir, /directory/], [d.socket, /socket/]] as const) {
    const r = await ctl(d, 'image', 'import', src, '--name', 'x')
    t.equal(r.exitCode, 66, `${src}: SOURCE_INVALID`)
    t.match(r.stderr, why)
    t.match(r.stderr, /path: /, 'names the field')
  }
  t.same(await d.ctlJson('image', 'ls'), [], 'catalog unchanged')
  await serving(t, d, 'hostile sources')
})

t.test('a source that ends before its size is SOURCE_CHANGED', async t => {
  const dir = await tempDir()
  const src = path.join(dir, 'src')
  await fs.writeFile(src, Buffer.alloc(1 << 20, 7))
  const from = await fs.open(src, 'r')
  const to = await fs.open(path.join(dir, 'dst'), 'w+')
  await to.truncate(2 << 20)
  await t.rejects(copyNonZero(from, to, { size: 2 << 20, blockSize: 4096, source: src }), { code: 'SOURCE_CHANGED', message: /ended at byte 1048576 of 2097152/ })
  await from.close()
  await to.close()
})

t.test('openSource: opened once without blocking, kinds and size checked on the descriptor', async t => {
  const dir = await tempDir()
  const fifo = path.join(dir, 'fifo')
  await execa('mkfifo', [fifo])
  await t.rejects(openSource(fifo, { field: 'files[0].source', code: 'SPEC_INVALID' }), { code: 'SPEC_INVALID', message: /files\[0\]\.source: .* is a FIFO/ })
  await t.rejects(openSource('/dev/zero', { field: 'rootfs' }), { code: 'SOURCE_INVALID', message: /rootfs: \/dev\/zero is a character device/ })
  await t.rejects(openSource(dir, { field: 'path' }), { message: /is a directory/ })
  await t.rejects(openSource('relative', { field: 'path' }), { message: /not an absolute path/ })
  const file = path.join(dir, 'f')
  await fs.writeFile(file, Buffer.alloc(5000, 1))
  await t.rejects(openSource(file, { field: 'files[1].source', maxBytes: 4096, limitKey: 'maxSourceBytes' }), { message: /5000 bytes, over the limit of 4096 \(config maxSourceBytes\)/ })
  const ok = await openSource(file, { field: 'path', maxBytes: 8192 })
  t.equal(ok.size, 5000)
  t.equal(ok.kind, 'file')
  await ok.handle.close()
  await fs.writeFile(path.join(dir, 'empty'), '')
  await t.rejects(openSource(path.join(dir, 'empty'), { field: 'path', refuseEmpty: true }), { code: 'SOURCE_EMPTY' })
})

t.test('createExportTarget: only a regular file outside the data dir is replaced', async t => {
  const dir = await tempDir()
  const dataDir = path.join(dir, 'data')
  await fs.mkdir(dataDir)
  const opts = { dataDir, protectedPaths: [path.join(dir, 'osfarmd.sock')] }
  const dev = path.join(dir, 'null')
  await execa('mknod', [dev, 'c', '1', '3'])
  const fifo = path.join(dir, 'fifo')
  await execa('mkfifo', [fifo])
  const sockServer = net.createServer()
  await new Promise<void>(resolve => sockServer.listen(path.join(dir, 'osfarmd.sock'), resolve))
  t.teardown(() => { sockServer.close() })
  const other = path.join(dir, 'other.sock')
  const otherServer = net.createServer()
  await new Promise<void>(resolve => otherServer.listen(other, resolve))
  t.teardown(() => { otherServer.close() })
  await fs.symlink(dataDir, path.join(dir, 'link-to-data'))
  await fs.symlink('/dev/null', path.join(dir, 'link-to-null'))
  const cases: Array<[string, RegExp]> = [
    [dev, /device node/],
    [fifo, /FIFO/],
    [other, /is a socket/],
    [path.join(dir, 'osfarmd.sock'), /socket or config/],
    [dataDir, /data directory/],
    [path.join(dataDir, 'volumes', 'x'), /data directory|does not exist/],
    [path.join(dir, 'link-to-data', 'x'), /data directory/],
    [path.join(dir, 'link-to-null'), /symbolic link/],
    [dir, /is a directory/],
    [path.join(dir, 'no-such-dir', 'x'), /does not exist/]
  ]
  await fs.mkdir(path.join(dataDir, 'volumes'))
  for (const [target, why] of cases) {
    await t.rejects(createExportTarget(target, opts), { code: 'TARGET_UNWRITABLE', message: why }, target)
  }
  t.ok((await fs.stat(dev)).isCharacterDevice(), 'the device node is untouched')
  const file = path.join(dir, 'out.img')
  await fs.writeFile(file, 'old')
  const out = await createExportTarget(file, opts)
  await out.handle.write(Buffer.from('new'))
  await out.commit()
  t.equal(await fs.readFile(file, 'utf8'), 'new', 'a regular file is replaced')
  const left = (await fs.readdir(dir)).filter(n => n.includes('.osfarm-'))
  t.same(left, [], 'no temporary file left')
  const aborted = await createExportTarget(path.join(dir, 'never.img'), opts)
  await aborted.abort()
  t.same((await fs.readdir(dir)).filter(n => n.includes('never')), [], 'abort leaves nothing')
})

t.test('export over a device node, a socket, the data dir: TARGET_UNWRITABLE, nothing replaced', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const src = path.join(d.dir, 'src.img')
  await fs.writeFile(src, Buffer.alloc(1 << 20, 3))
  t.equal((await ctl(d, 'image', 'import', src, '--name', 'img')).exitCode, 0)
  const dev = path.join(d.dir, 'null')
  await execa('mknod', [dev, 'c', '1', '3'])
  for (const target of [dev, d.socket, path.join(d.dataDir, 'x.img')]) {
    const r = await ctl(d, 'image', 'export', 'img', '-o', target)
    t.equal(r.exitCode, 73, `${target}: TARGET_UNWRITABLE`)
    t.match(r.stderr, /TARGET_UNWRITABLE/)
  }
  t.ok((await fs.stat(dev)).isCharacterDevice(), 'the device node is still a device node')
  t.ok((await fs.stat(d.socket)).isSocket(), 'the socket is still the socket')
  await serving(t, d, 'hostile export targets')
})

t.test('a full filesystem: STORE_FULL on import, NO_SPACE on export, naming the path; nothing left', async t => {
  const dir = await tempDir()
  const small = path.join(dir, 'small')
  await fs.mkdir(small)
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', small])
  t.teardown(() => execa('umount', ['-l', small], { reject: false }))
  const d = await startDaemon({ dir: small })
  t.teardown(() => d.stop())
  const big = path.join(dir, 'big.img')
  await fs.writeFile(big, Buffer.alloc(96 << 20, 9))
  const r = await ctl(d, 'image', 'import', big, '--name', 'big')
  t.equal(r.exitCode, 73, 'import into a full store: exit 73')
  t.match(r.stderr, /STORE_FULL.*no space left on the filesystem of/)
  t.same(await d.ctlJson('image', 'ls'), [], 'no image registered')
  t.same(await fs.readdir(path.join(d.dataDir, 'volumes')).catch(() => []), [], 'no volume left')
  await serving(t, d, 'a full store')

  const src = path.join(dir, 'src.img')
  await fs.writeFile(src, Buffer.alloc(16 << 20, 5))
  const d2 = await startDaemon()
  t.teardown(() => d2.stop())
  t.equal((await ctl(d2, 'image', 'import', src, '--name', 'img')).exitCode, 0)
  const tiny = path.join(dir, 'tiny')
  await fs.mkdir(tiny)
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', tiny])
  t.teardown(() => execa('umount', ['-l', tiny], { reject: false }))
  const e = await ctl(d2, 'image', 'export', 'img', '-o', path.join(tiny, 'out.img'))
  t.equal(e.exitCode, 73, 'export onto a full filesystem: exit 73')
  t.match(e.stderr, /NO_SPACE.*out\.img/)
  t.same(await fs.readdir(tiny), [], 'no temporary file left on the full filesystem')
  await serving(t, d2, 'a full export target')
})

t.test('connections: a partial frame left idle is closed, the cap answers DAEMON_BUSY, memory stays bounded', async t => {
  const d = await withConfig({ idleTimeoutSeconds: 1, maxConnections: 72 })
  t.teardown(() => d.stop())
  const before = await rssMiB(d.proc.pid!)
  const conns: net.Socket[] = []
  const closed = new Set<net.Socket>()
  const partial = Buffer.alloc(4 << 20, 0x61)
  partial.write('{"jsonrpc":"2.0","id":1,"method":"image.get","params":{"id":"')
  for (let i = 0; i < 60; i++) {
    const c = net.connect(d.socket)
    c.on('error', () => {})
    c.on('close', () => closed.add(c))
    await new Promise(resolve => c.once('connect', resolve))
    c.write(partial)
    conns.push(c)
  }
  // A connection with a complete call answered and nothing buffered is not idle.
  const quiet = await OsfarmClient.connect(d.socket)
  await quiet.call('daemon.version', {})
  await new Promise(resolve => setTimeout(resolve, 300))
  const peak = await rssMiB(d.proc.pid!)
  await waitFor(() => closed.size === conns.length)
  t.pass('every connection holding a partial frame was closed')
  t.ok((await quiet.call('daemon.version', {})).version, 'the quiet connection is still open')

  // The cap: 72 connections; one more is answered DAEMON_BUSY.
  const held: net.Socket[] = []
  t.teardown(() => { for (const c of held) c.destroy() })
  for (let i = 0; i < 71; i++) {
    const c = net.connect(d.socket)
    c.on('error', () => {})
    await new Promise(resolve => c.once('connect', resolve))
    held.push(c)
  }
  const over = net.connect(d.socket)
  let answer = ''
  over.on('data', x => { answer += x })
  over.on('error', () => {})
  await waitFor(() => answer.includes('\n'))
  t.equal(JSON.parse(answer).error.data.code, 'DAEMON_BUSY')
  over.destroy()
  for (const c of held) c.destroy()
  quiet.close()
  await waitFor(async () => (await ctl(d, 'status')).exitCode === 0)
  await serving(t, d, 'a flood of connections')
  const after = await rssMiB(d.proc.pid!)
  t.comment(`daemon RSS ${before.toFixed(1)} MiB before, ${peak.toFixed(1)} MiB with 60 connections of 4 MiB partial frames (240 MiB sent), ${after.toFixed(1)} MiB after`)
  t.ok(peak - before < 180, 'RSS grew by less than the 240 MiB sent: partial frames stay under the 64 MiB budget plus slack')
})

t.test('the daemon dying mid-call is DAEMON_UNREACHABLE in the CLI', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const src = path.join(d.dir, 'sparse.img')
  const fh = await fs.open(src, 'w')
  await fh.truncate(32 * 2 ** 30)
  await fh.write(Buffer.alloc(4096, 1), 0, 4096, 0)
  await fh.close()
  const job = await d.ctlJson('image', 'import', src, '--name', 'long', '--no-wait')
  const watch = execa(process.execPath, [OSFARMCTL, '--socket', d.socket, 'job', 'watch', job.id], { reject: false, timeout: CTL_TIMEOUT_MS })
  await new Promise(resolve => setTimeout(resolve, 1000))
  await d.stop('SIGKILL')
  const r = await watch
  t.notOk(r.timedOut, 'osfarmctl returned')
  t.equal(r.exitCode, 69, 'exit 69')
  t.match(String(r.stderr), /DAEMON_UNREACHABLE/)
})

t.test('HTTP: a bad %-escape or a malformed cookie is 400, not 500', async t => {
  const d = await withConfig({ http: { listen: '127.0.0.1:0' } })
  t.teardown(() => d.stop())
  await waitFor(() => /web console listening/.test(d.output()))
  const url = /url=(http:\/\/[^\s]+)/.exec(d.output())![1]!.replace(/\/$/, '')
  const bad = await fetch(`${url}/images/%E0%A4%A/download`)
  t.equal(bad.status, 400, 'bad escape in a download path')
  const cookie = await fetch(`${url}/session`, { headers: { cookie: 'osfarm_token=%E0%A4%A' } })
  t.equal(cookie.status, 400, 'malformed cookie')
  const ok = await fetch(`${url}/session`)
  t.equal(ok.status, 200, 'the console still answers')
})
