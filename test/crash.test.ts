// kill -9 in the middle of an import: nothing half-made is listed, and the next start cleans up.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { startDaemon } from '../testing/daemon.js'
import { makeImage } from '../testing/images.js'

t.test('kill -9 during an import leaves no half-image', async t => {
  const d = await startDaemon()
  const keep = path.join(d.dir, 'keep.img')
  await makeImage(keep, { blocks: 100 })
  await d.ctlJson('image', 'import', keep, '--name', 'keep')
  const big = path.join(d.dir, 'big.img')
  await makeImage(big, { blocks: 100_000 }) // ~400 MiB, 60% data
  const job = await d.ctlJson('image', 'import', big, '--name', 'half', '--no-wait')
  // Wait until the import is under way (copying or indexing), then kill the daemon hard.
  let progressed = false
  for (let i = 0; i < 500 && !progressed; i++) {
    const j = await d.ctlJson('job', 'show', job.id)
    progressed = j.state === 'running' && ['copy', 'index'].includes(j.progress.phase) && j.progress.done > 0
    if (j.state !== 'running') break
  }
  t.ok(progressed, 'the import was under way')
  await d.stop('SIGKILL')
  const volumesDir = path.join(d.dataDir, 'volumes')
  t.ok((await fs.readdir(volumesDir)).some(f => f.endsWith('.active')), 'the crash left an unfinished volume')

  const again = await d.restart()
  t.teardown(() => again.stop())
  const names = (await again.ctlJson('image', 'ls')).map((i: any) => i.name)
  t.same(names, ['keep'], 'only the finished image is listed')
  t.notOk((await fs.readdir(volumesDir)).some(f => f.endsWith('.active')), 'the unfinished volume was removed')
  t.match(again.output(), /removed unfinished volumes left by a crash/)
  const j = await again.ctlJson('job', 'show', job.id)
  t.equal(j.state, 'failed')
  t.match(j.error.message, /daemon stopped while this job ran/)
  t.ok((await again.ctlJson('image', 'verify', 'keep')).ok)
  // The name is free again.
  const small = path.join(d.dir, 'small.img')
  await makeImage(small, { blocks: 10 })
  t.equal((await again.ctlJson('image', 'import', small, '--name', 'half')).name, 'half')
})
