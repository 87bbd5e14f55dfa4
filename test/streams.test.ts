// The API's byte streams against hostile callers: a stream that goes backwards, overlaps, writes
// past its size, sends a frame over the cap or an unknown type, ends early, or attaches with a
// wrong or used token fails its job with a clear code; the daemon serves on and keeps no volume.

import t from 'tap'
import net from 'node:net'
import fs from 'node:fs/promises'
import path from 'node:path'
import { startDaemon } from '../testing/daemon.js'
import { OsfarmClient } from '../client/client.js'
import { attachStream } from '../client/streams.js'
import { DATA, END, FRAME_HEADER_BYTES, MAX_STREAM_DATA, frameHeader, parseResult, readFrames, sendFrame } from '../protocol/stream.js'

const d = await startDaemon()
t.teardown(() => d.stop())
// The group's socket: these callers stream, as users without root do.
const c = await OsfarmClient.connect(d.socket)
t.teardown(() => c.close())

const block = (fill: number) => Buffer.alloc(4096, fill)
let n = 0

// Opens an upload of `size`, runs `send` on its stream, and returns the RESULT's error code and
// the job's end.
async function hostileUpload (size: number, send: (s: net.Socket) => Promise<void>): Promise<{ streamCode?: string, job: { state: string, error?: { code: string } } }> {
  const { job, stream } = await c.call('image.upload', { name: `hostile-${n++}`, size })
  const { socket, rest } = await attachStream(c.path, stream)
  await send(socket)
  let streamCode: string | undefined
  try {
    // The first frame only.
    // eslint-disable-next-line no-unreachable-loop
    for await (const f of readFrames(socket as AsyncIterable<Buffer>, rest)) {
      try { parseResult(f.payload) } catch (err) { streamCode = (err as { code: string }).code }
      break
    }
  } catch {}
  socket.destroy()
  const end = await c.call('job.watch', { id: job.id })
  return { streamCode, job: end as never }
}

t.test('frames that go backwards or overlap are refused', async t => {
  const r = await hostileUpload(8192, async s => {
    await sendFrame(s, DATA, 4096, block(1))
    await sendFrame(s, DATA, 0, block(2))
  })
  t.equal(r.job.state, 'failed')
  t.equal(r.job.error?.code, 'PROTOCOL_ERROR', 'backwards')
  t.equal(r.streamCode, 'PROTOCOL_ERROR', 'and the caller is told why')
  const o = await hostileUpload(8192, async s => {
    await sendFrame(s, DATA, 0, Buffer.concat([block(1), block(1)]))
    await sendFrame(s, DATA, 4096, block(2))
  })
  t.equal(o.job.error?.code, 'PROTOCOL_ERROR', 'overlapping')
})

t.test('past the announced size, or ending short of it: SOURCE_CHANGED', async t => {
  const past = await hostileUpload(4096, s => sendFrame(s, DATA, 4096, block(1)))
  t.equal(past.job.error?.code, 'SOURCE_CHANGED')
  const short = await hostileUpload(8192, async s => { await sendFrame(s, DATA, 0, block(1)); await sendFrame(s, END, 4096) })
  t.equal(short.job.error?.code, 'SOURCE_CHANGED')
  const closed = await hostileUpload(8192, async s => { await sendFrame(s, DATA, 0, block(1)); s.end() })
  t.equal(closed.job.error?.code, 'SOURCE_CHANGED', 'a caller that closes before END')
})

t.test('a frame over the cap, or of an unknown type, before any of it is buffered', async t => {
  const big = await hostileUpload(1 << 30, async s => { s.write(frameHeader(DATA, 0, MAX_STREAM_DATA + 1)) })
  t.equal(big.job.error?.code, 'PROTOCOL_ERROR')
  const odd = await hostileUpload(4096, async s => { const h = frameHeader(DATA, 0, 0); h[0] = 77; s.write(h) })
  t.equal(odd.job.error?.code, 'PROTOCOL_ERROR')
  t.equal(FRAME_HEADER_BYTES, 16)
})

t.test('a token works once, and a made-up one not at all', async t => {
  await t.rejects(attachStream(c.path, '0'.repeat(32)), { code: 'NOT_FOUND' })
  const { job, stream } = await c.call('image.upload', { name: 'once', size: 4096 })
  const first = await attachStream(c.path, stream)
  await t.rejects(attachStream(c.path, stream), { code: 'NOT_FOUND' }, 'a second attach is refused')
  await sendFrame(first.socket, DATA, 0, block(9))
  await sendFrame(first.socket, END, 4096)
  const end = await c.call('job.watch', { id: job.id })
  t.equal(end.state, 'done', 'the first goes on')
  first.socket.destroy()
})

t.test('the daemon serves on and keeps no volume of a failed upload', async t => {
  t.equal((await d.ctl('status')).exitCode, 0)
  const images = await d.ctlJson('image', 'ls')
  t.same(images.map((i: { name: string }) => i.name), ['once'])
  const volumes = await fs.readdir(path.join(d.dataDir, 'volumes'))
  t.equal(volumes.length, 1, `one volume, the good upload's (${volumes.join(', ')})`)
})
