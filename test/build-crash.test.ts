// kill -9 of osfarmd in the middle of a build — during mmdebstrap, during apt in a packages
// step, during a script — leaves nothing once it is restarted, before any build runs: no
// mount, no loop device, no scratch dir, no step cgroup, no process of the build. A rebuild
// then succeeds. The real osfarmd and osfarmctl; mmdebstrap against the host's apt mirror.

import t, { type Test } from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { cgroupPrefix } from '../daemon/builder/sandbox/cgroup.js'
import type { BuildResultInfo, JobInfo } from '../protocol/rpc.js'
import { busyboxRootfs } from '../testing/rootfs.js'

const dir = await tempDir('osfarm-build-crash-')
const dataDir = path.join(dir, 'data')
const workDir = path.join(dataDir, 'build')
let d: TestDaemon = await startDaemon({ dir })
t.teardown(async () => {
  await d.stop()
  await fs.rm(dir, { recursive: true, force: true })
})

await busyboxRootfs(path.join(dir, 'rootfs'), path.join(dir, 'rootfs.tar'))

const writeSpec = async (name: string, spec: Record<string, unknown>) => {
  const file = path.join(dir, name)
  await fs.writeFile(file, JSON.stringify(spec))
  return file
}

// What a build could leave on the host: mounts and loop devices on this test's files (findmnt,
// losetup), scratch dirs, step cgroups, and processes that name this test's dir.
async function leftovers (): Promise<string[]> {
  const problems: string[] = []
  const mounts = await execa('findmnt', ['-rn', '-o', 'TARGET,SOURCE'], { reject: false })
  for (const line of String(mounts.stdout).split('\n')) if (line.includes(dir)) problems.push(`mount: ${line}`)
  const loops = await execa('losetup', ['-a'], { reject: false })
  for (const line of String(loops.stdout).split('\n')) if (line.includes(dir)) problems.push(`loop: ${line}`)
  for (const name of await fs.readdir(workDir).catch(() => [] as string[])) if (/^(mnt|base)-/.test(name)) problems.push(`scratch: ${name}`)
  const cgroups = await execa('find', ['/sys/fs/cgroup', '-maxdepth', '5', '-type', 'd', '-name', `${cgroupPrefix(workDir)}*`], { reject: false })
  for (const line of String(cgroups.stdout).split('\n').filter(Boolean)) problems.push(`cgroup: ${line}`)
  for (const pid of await processesWith(dir)) if (pid !== d.proc.pid) problems.push(`process: ${pid}`)
  return problems
}

async function processesWith (text: string): Promise<number[]> {
  const found: number[] = []
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    const cmd = await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    if (cmd.includes(text)) found.push(Number(name))
  }
  return found
}

// Polls (bounded) until ready() holds; fails the test if it never does.
async function until (t: Test, what: string, ready: () => Promise<boolean>, tries = 1200): Promise<void> {
  await eventually(what, ready, { timeoutMs: tries * 100 }).catch(() => t.fail(`${what} never happened`))
}

const job = async (id: string) => d.ctlJson<JobInfo>('job', 'show', id)

// Kills osfarmd with SIGKILL once `ready` holds, restarts it (no build), and checks the host.
async function crashDuring (t: Test, spec: string, ready: (j: JobInfo) => Promise<boolean>, what: string): Promise<void> {
  const started = await d.ctlJson<JobInfo>('build', spec)
  await until(t, what, async () => {
    const j = await job(started.id)
    if (j.state !== 'running') throw new Error(`the build ended before the kill: ${j.state} ${j.error?.message ?? ''}`)
    return ready(j)
  })
  await d.stop('SIGKILL')
  // The sandbox dies with osfarmd (parent-death signal): its mounts and processes go at once.
  await until(t, 'the build\'s processes to go', async () => (await processesWith(dir)).filter(p => p !== d.proc.pid).length === 0, 100)
  t.comment(`left right after the kill, before a restart: ${JSON.stringify(await leftovers())}`)
  d = await startDaemon({ dir })
  t.same(await leftovers(), [], `after ${what} and a restart, with no build: nothing left`)
  const j = await job(started.id)
  t.equal(j.state, 'failed', 'the killed build is a failed job')
}

t.test('kill -9 during a script step', async t => {
  const spec = await writeSpec('script.json', { name: 'crash-script', flavour: 'rootfs', rootfs: path.join(dir, 'rootfs.tar'), size: '64M', scripts: ['echo sleeping; sleep 7654321'] })
  await crashDuring(t, spec, async j => /scripts/.test(j.progress.phase) && (await processesWith('7654321')).length > 0, 'a script step')
  t.same(await processesWith('7654321'), [], 'the script is gone')
  const again = await writeSpec('script2.json', { name: 'crash-script', flavour: 'rootfs', rootfs: path.join(dir, 'rootfs.tar'), size: '64M', scripts: ['echo done > /done'] })
  const r = await d.ctlJson<BuildResultInfo>('build', again, '--wait')
  t.same(r.layers.map(l => l.step), ['base', 'scripts'], 'a rebuild succeeds')
  t.same(await leftovers(), [])
})

t.test('kill -9 during mmdebstrap, with its chroot mounts up', async t => {
  const spec = await writeSpec('base.json', { name: 'crash-base', release: 'bookworm', variant: 'minbase', size: '1G' })
  await crashDuring(t, spec, async j => {
    if (!/bootstrap/.test(j.progress.phase)) return false
    // mmdebstrap's own mounts (proc in the tree), seen in its mount namespace.
    for (const pid of await processesWith('mmdebstrap')) {
      const info = await fs.readFile(`/proc/${pid}/mountinfo`, 'utf8').catch(() => '')
      if (info.split('\n').some(l => l.includes(workDir) && / proc /.test(l))) return true
    }
    return false
  }, 'mmdebstrap')
  const r = await d.ctlJson<BuildResultInfo>('build', spec, '--wait')
  t.same(r.layers.map(l => [l.step, l.cached]), [['base', false]], 'a rebuild succeeds')
  t.same(await leftovers(), [])
})

t.test('kill -9 during apt-get in a packages step', async t => {
  const spec = await writeSpec('pkg.json', { name: 'crash-pkg', release: 'bookworm', variant: 'minbase', size: '1G', packages: ['openssh-server'] })
  await crashDuring(t, spec, async j => /apt install/.test(j.progress.phase) && j.progress.done > 0, 'apt-get install')
  const r = await d.ctlJson<BuildResultInfo>('build', spec, '--wait')
  t.same(r.layers.map(l => [l.step, l.cached]), [['base', true], ['packages', false]], 'a rebuild succeeds, on the cached base')
  t.same(await leftovers(), [])
})
