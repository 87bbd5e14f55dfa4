// npm run bench:stream — import and export of a 2 GiB image with ~50% data by a user without
// root (the bytes stream through the socket; osfarmctl reads and writes the files with the
// user's rights) beside root's path (osfarmd opens the files itself) and `cp --sparse=always`,
// in the same run: seconds, GB/s of image, and CPU seconds of osfarmctl and of osfarmd.
//   OSFARM_BENCH_SIZE_MIB=2048 (default)  OSFARM_BENCH_DIR=/var/tmp (default)

import fs from 'node:fs/promises'
import path from 'node:path'
import os from 'node:os'
import { execa } from 'execa'
import { OSFARMCTL, startDaemon, type TestDaemon } from '../../testing/daemon.js'
import { makeHalfDataImage } from './half-data-image.js'

const SIZE = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 2048) * (1 << 20)
const DIR = process.env.OSFARM_BENCH_DIR ?? '/var/tmp'
const RUNS = 3
// The user streams as: nobody, on a socket open to all (the bench's own daemon).
const NOBODY = 65534

interface Row { what: string, seconds: number, clientCpu: number, daemonCpu: number }

function cpuSeconds (pid: number): Promise<number> {
  return fs.readFile(`/proc/${pid}/stat`, 'utf8').then(s => {
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) / 100
  })
}

// Runs a shell command (as `uid`), returning wall seconds and its CPU (user + system, children included).
async function timed (cmd: string, uid?: number): Promise<{ seconds: number, cpu: number }> {
  const wrapped = `TIMEFORMAT='%3U %3S'; time ( ${cmd} ) 2>&1 >/dev/null`
  const argv = uid === undefined ? ['bash', '-c', wrapped] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-u', 'NODE_OPTIONS', 'bash', '-c', wrapped]
  const t0 = process.hrtime.bigint()
  const r = await execa(argv[0]!, argv.slice(1), { reject: false, all: true })
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.exitCode !== 0) throw new Error(`${cmd} failed: ${r.all}`)
  const [u, s] = String(r.all).trim().split('\n').pop()!.split(' ').map(Number)
  return { seconds, cpu: u! + s! }
}

async function best (what: string, d: TestDaemon, run: (i: number) => Promise<{ seconds: number, cpu: number }>, after?: (i: number) => Promise<void>): Promise<Row> {
  let row: Row | undefined
  for (let i = 0; i < RUNS; i++) {
    const before = await cpuSeconds(d.proc.pid!)
    const r = await run(i)
    const daemonCpu = await cpuSeconds(d.proc.pid!) - before
    if (!row || r.seconds < row.seconds) row = { what, seconds: r.seconds, clientCpu: r.cpu, daemonCpu }
    await after?.(i)
  }
  return row!
}

async function main (): Promise<void> {
  const work = await fs.mkdtemp(path.join(DIR, 'osfarm-bench-stream-'))
  try {
    await fs.chmod(work, 0o777)
    const file = path.join(work, 'image.raw')
    const nonZero = await makeHalfDataImage(file, SIZE)
    await fs.chmod(file, 0o644)
    const gb = SIZE / 1e9
    console.log(`image: ${(SIZE / 2 ** 30).toFixed(2)} GiB, ${(100 * nonZero / SIZE).toFixed(1)}% non-zero; ${os.availableParallelism()} cores; best of ${RUNS}; page cache warm`)
    await execa('sh', ['-c', `cat '${file}' >/dev/null`])
    const config = path.join(work, 'osfarmd.json')
    await fs.writeFile(config, JSON.stringify({ socketMode: '0666' }))
    const d = await startDaemon({ dir: path.join(work, 'daemon'), args: ['-c', config] })
    const ctl = `node ${OSFARMCTL} --socket ${d.socket}`
    const rows: Row[] = []
    try {
      await fs.chmod(path.join(work, 'daemon'), 0o711)
      const rm = async (name: string) => { await d.ctl('image', 'rm', name) }
      const out = (i: number) => path.join(work, `out-${i}.raw`)
      const rmOut = (i: number) => fs.rm(out(i), { force: true })

      const cp = await best('cp --sparse=always FILE COPY', d, async i => timed(`cp --sparse=always ${file} ${out(i)} && sync -f ${out(i)}`), rmOut)
      rows.push(cp)
      rows.push(await best('import, root (osfarmd opens FILE)', d, i => timed(`${ctl} image import ${file} --name root-${i}`), i => rm(`root-${i}`)))
      rows.push(await best('import, user (streamed by osfarmctl)', d, i => timed(`${ctl} image import ${file} --name user-${i}`, NOBODY), i => rm(`user-${i}`)))
      await d.ctlJson('image', 'import', file, '--name', 'bench')
      rows.push(await best('export, root (osfarmd writes FILE)', d, i => timed(`${ctl} image export bench -o ${out(i)}`), rmOut))
      rows.push(await best('export, user (streamed to osfarmctl)', d, i => timed(`${ctl} image export bench -o ${out(i)}`, NOBODY), rmOut))
      rows.push(await best('export, user, to stdout (a pipe: holes as zeros)', d, () => timed(`${ctl} image export bench -o - | cat >/dev/null`, NOBODY)))
      // The streamed copy is the same bytes, as sparse.
      await execa('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'env', '-u', 'NODE_OPTIONS', 'node', OSFARMCTL, '--socket', d.socket, 'image', 'export', 'bench', '-o', out(9)])
      await execa('cmp', [file, out(9)])
      const alloc = async (f: string) => (await fs.stat(f)).blocks * 512
      console.log(`streamed export: byte-identical (cmp), ${(await alloc(out(9)) / 2 ** 20).toFixed(0)} MiB allocated vs ${(await alloc(file) / 2 ** 20).toFixed(0)} MiB for the source`)
    } finally {
      await d.stop()
    }
    console.log('\n| what | seconds | GB/s of image | CPU s osfarmctl (or tool) | CPU s osfarmd |\n|---|---:|---:|---:|---:|')
    for (const r of rows) console.log(`| ${r.what} | ${r.seconds.toFixed(2)} | ${(gb / r.seconds).toFixed(2)} | ${r.clientCpu.toFixed(2)} | ${r.daemonCpu.toFixed(2)} |`)
    const by = (w: string) => rows.find(r => r.what.startsWith(w))!
    console.log(`\nstreamed vs root: import ${(100 * by('import, root').seconds / by('import, user').seconds).toFixed(0)}% of root's rate, export ${(100 * by('export, root').seconds / by('export, user (').seconds).toFixed(0)}% (targets: >= 1 GB/s streamed, >= 50% of root's rate)`)
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exit(1) })
