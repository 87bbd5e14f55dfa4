import t from 'tap'
import os from 'node:os'
import { spawn } from 'node:child_process'
import { cpuIdleShare } from '../daemon/blocks/cpu-idle.js'

t.test('cpuIdleShare: idle until a sample shows every core busy', async t => {
  t.equal(cpuIdleShare(), 1, 'idle before a second sample')
  // One spinning process per core; the sample that counts starts once they all spin.
  const spinners = os.cpus().map(() => spawn(process.execPath, ['-e', 'const end = Date.now() + 4000; while (Date.now() < end);'], { stdio: 'ignore', env: {} }))
  t.teardown(() => { for (const p of spinners) p.kill('SIGKILL') })
  await new Promise(resolve => setTimeout(resolve, 1100))
  cpuIdleShare()
  await new Promise(resolve => setTimeout(resolve, 600))
  const busy = cpuIdleShare()
  t.ok(busy < 0.1, `under a tenth idle while every core spins (${busy.toFixed(3)})`)
  t.equal(cpuIdleShare(), busy, 'one sample at a time: the same answer within it')
})
