import t from 'tap'
import os from 'node:os'
import { spawn } from 'node:child_process'
import { cpuBusy } from '../daemon/blocks/cpu-idle.js'

t.test('cpuBusy: idle until a sample shows every core busy', async t => {
  t.equal(cpuBusy(), false, 'no verdict before a second sample')
  // One spinning process per core; the sample that counts starts once they all spin.
  const spinners = os.cpus().map(() => spawn(process.execPath, ['-e', 'const end = Date.now() + 4000; while (Date.now() < end);'], { stdio: 'ignore', env: {} }))
  t.teardown(() => { for (const p of spinners) p.kill('SIGKILL') })
  await new Promise(resolve => setTimeout(resolve, 1100))
  cpuBusy()
  await new Promise(resolve => setTimeout(resolve, 1100))
  t.equal(cpuBusy(), true, 'busy while every core spins')
})
