// The socket protocol under abuse: garbage, oversize frames, unknown methods, bad params and
// clients that vanish mid-job. Each gets a JSON-RPC error (or nothing), never a crash.

import t from 'tap'
import { eventually } from '../testing/eventually.js'
import net from 'node:net'
import fs from 'node:fs/promises'
import path from 'node:path'
import { startDaemon } from '../testing/daemon.js'
import { makeImage } from '../testing/images.js'
import { MAX_FRAME_BYTES, adminSocketPath } from '../protocol/rpc.js'

// Sends raw bytes and collects the newline-delimited replies until `count` arrive.
async function exchange (socket: string, payload: string | Buffer, count: number): Promise<any[]> {
  const c = net.connect(socket)
  const replies: any[] = []
  let buf = ''
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.destroy(); reject(new Error(`got ${replies.length} of ${count} replies: ${JSON.stringify(replies)}`)) }, 10_000)
    c.on('data', d => {
      buf += d
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        replies.push(JSON.parse(buf.slice(0, nl)))
        buf = buf.slice(nl + 1)
      }
      if (replies.length >= count) { clearTimeout(timer); c.end(); resolve(replies) }
    })
    c.on('error', reject)
    c.write(payload)
  })
}

t.test('malformed requests get JSON-RPC errors with stable codes', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const req = (o: unknown) => JSON.stringify(o) + '\n'
  const replies = await exchange(d.socket, [
    'this is not json\n',
    req({ jsonrpc: '2.0', id: 1, method: 'no.such.method' }),
    req({ jsonrpc: '2.0', id: 2, method: 'image.get', params: { id: 5 } }),
    req({ jsonrpc: '2.0', id: 3, method: 'image.get', params: { id: 'x', extra: true } }),
    req({ jsonrpc: '2.0', id: 4, method: 'image.import', params: ['positional'] }),
    req({ id: 5, method: 'daemon.version' }),
    req({ jsonrpc: '2.0', id: 6, method: 'image.export', params: { id: 'x', path: '/tmp/x', format: 'vmdk' } }),
    req({ jsonrpc: '2.0', id: 7, method: 'daemon.version' })
  ].join(''), 8)
  const byId = new Map(replies.map(r => [r.id, r]))
  t.equal(replies.find(r => r.id === null)?.error.data.code, 'BAD_REQUEST', 'garbage → BAD_REQUEST')
  t.equal(byId.get(1).error.data.code, 'UNKNOWN_METHOD')
  t.equal(byId.get(1).error.code, -32601)
  t.equal(byId.get(2).error.data.code, 'BAD_PARAMS')
  t.match(byId.get(2).error.message, /"id" must be a non-empty string/)
  t.match(byId.get(3).error.message, /unknown parameter "extra"/)
  t.equal(byId.get(4).error.data.code, 'BAD_PARAMS')
  t.equal(byId.get(5).error.data.code, 'BAD_REQUEST', 'missing jsonrpc member')
  t.match(byId.get(6).error.message, /"format" must be one of raw, qcow2/)
  t.equal(byId.get(7).result.apiVersion, 1, 'the connection still works after all that')
})

t.test('a frame over the size cap is refused and the connection recovers', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const huge = '{"jsonrpc":"2.0","id":1,"method":"image.get","params":{"id":"' + 'a'.repeat(MAX_FRAME_BYTES + (1 << 20)) + '"}}\n'
  const replies = await exchange(d.socket, huge + JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'daemon.version' }) + '\n', 2)
  t.equal(replies[0].error.data.code, 'FRAME_TOO_LARGE')
  t.equal(replies[1].id, 2)
  t.ok(replies[1].result)
})

t.test('random bytes and abrupt disconnects leave the daemon serving', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  for (let i = 0; i < 50; i++) {
    const c = net.connect(d.socket)
    await new Promise(resolve => c.once('connect', resolve))
    c.write(Buffer.from(Array.from({ length: 1 + (i * 97) % 5000 }, (_, j) => (i * 31 + j * 7) & 0xff)))
    c.destroy()
  }
  t.equal((await d.ctl('status')).exitCode, 0)
})

t.test('a client that disconnects mid-job does not disturb the job or the catalog', async t => {
  const d = await startDaemon()
  t.teardown(() => d.stop())
  const src = path.join(d.dir, 'big.img')
  await makeImage(src, { blocks: 20_000 })
  const c = net.connect(adminSocketPath(d.socket)) // root's socket: image.import opens a host path
  await new Promise(resolve => c.once('connect', resolve))
  let got = ''
  c.on('data', x => { got += x })
  c.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'image.import', params: { path: src, name: 'big' } }) + '\n')
  await waitFor(() => got.includes('"id":1'))
  const job = JSON.parse(got.split('\n')[0]!).result
  c.write(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'job.watch', params: { id: job.id } }) + '\n')
  c.destroy()
  let state = 'running'
  for (let i = 0; i < 200 && state === 'running'; i++) {
    state = (await d.ctlJson('job', 'show', job.id)).state
    if (state === 'running') await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.equal(state, 'done', 'the job finished without its client')
  const [img] = await d.ctlJson('image', 'ls')
  t.equal(img.name, 'big')
  t.ok((await d.ctlJson('image', 'verify', 'big')).ok)
  t.equal((await fs.readdir(path.join(d.dataDir, 'volumes'))).length, 1)
})

const waitFor = async (cond: () => boolean, timeoutMs = 10_000): Promise<void> => { await eventually('the condition', cond, { timeoutMs, intervalMs: 20 }) }
