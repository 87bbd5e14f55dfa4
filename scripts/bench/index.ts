// npm run bench:index — hashing speed of the block index on a 2 GiB image with ~50% non-zero
// data, on one and on two cores, with the native BLAKE3 and with the wasm fallback, next to
// `cat FILE >/dev/null` (a page-cache read) in the same run; and the daemon's RSS growth while
// it imports (copies + indexes) that image.
//   OSFARM_BENCH_SIZE_MIB=2048 (default)  OSFARM_BENCH_DIR=/var/tmp (default)

import fs from 'node:fs/promises'
import path from 'node:path'
import os from 'node:os'
import { execa } from 'execa'
import { BlockHasher } from '../../daemon/blocks/block-hasher.js'
import { startDaemon } from '../../testing/daemon.js'
import { makeHalfDataImage } from './half-data-image.js'

const SIZE = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 2048) * (1 << 20)
const DIR = process.env.OSFARM_BENCH_DIR ?? '/var/tmp'
const RUNS = 3

async function best (fn: () => Promise<unknown>): Promise<number> {
  let min = Infinity
  for (let i = 0; i < RUNS; i++) {
    const t0 = process.hrtime.bigint()
    await fn()
    min = Math.min(min, Number(process.hrtime.bigint() - t0) / 1e9)
  }
  return min
}

function rssKiB (pid: number): Promise<number> {
  return fs.readFile(`/proc/${pid}/status`, 'utf8').then(s => Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0))
}

async function main (): Promise<void> {
  const work = await fs.mkdtemp(path.join(DIR, 'osfarm-bench-index-'))
  try {
    const file = path.join(work, 'image.raw')
    const nonZero = await makeHalfDataImage(file, SIZE)
    const gb = SIZE / 1e9
    console.log(`image: ${(SIZE / 2 ** 30).toFixed(2)} GiB, ${(100 * nonZero / SIZE).toFixed(1)}% non-zero, 4 KiB blocks; ${os.availableParallelism()} cores; best of ${RUNS}`)
    await execa('sh', ['-c', `cat '${file}' >/dev/null`])
    const catS = await best(() => execa('sh', ['-c', `cat '${file}' >/dev/null`]))
    const rows: Array<[string, number]> = [['cat FILE >/dev/null (page cache)', catS]]
    // Both BLAKE3 implementations: the native binding and the wasm fallback (hash-wasm), which
    // hosts without a binding use. The hashing workers pick theirs from OSFARM_BLAKE3 at start.
    for (const impl of ['native', 'wasm']) {
      process.env.OSFARM_BLAKE3 = impl
      for (const threads of [1, 2]) {
        const h = new BlockHasher(threads)
        const s = await best(() => h.indexFile(file))
        await h.close()
        rows.push([`osfarm index, ${impl} BLAKE3, ${threads} core${threads > 1 ? 's' : ''}`, s])
      }
    }
    delete process.env.OSFARM_BLAKE3
    console.log('\n| what | seconds | GB/s |\n|---|---:|---:|')
    for (const [what, s] of rows) console.log(`| ${what} | ${s.toFixed(3)} | ${(gb / s).toFixed(2)} |`)

    // The daemon's memory while it imports the image: the copy, then the index (hashing), then
    // the registration (catalog record, and the in-memory block locator the transfer engine keeps).
    const d = await startDaemon({ dir: work })
    try {
      const pid = d.proc.pid!
      await new Promise(resolve => setTimeout(resolve, 500))
      const before = await rssKiB(pid)
      const peak: Record<string, number> = {}
      let phase = 'start'
      const sampler = setInterval(() => {
        rssKiB(pid).then(r => { peak[phase] = Math.max(peak[phase] ?? 0, r) }, () => {})
      }, 20)
      const t0 = Date.now()
      const job = await d.ctlJson('image', 'import', file, '--name', 'bench', '--no-wait')
      for (;;) {
        const j = await d.ctlJson('job', 'show', job.id)
        if (j.state !== 'running') { if (j.state !== 'done') throw new Error(j.error?.message); break }
        phase = j.progress.phase
      }
      phase = 'registered'
      await new Promise(resolve => setTimeout(resolve, 200))
      clearInterval(sampler)
      const mib = (k: number) => (k / 1024).toFixed(1)
      console.log(`\ndaemon import (copy + index + register) of the image: ${((Date.now() - t0) / 1000).toFixed(2)} s; RSS before ${mib(before)} MiB`)
      for (const [p, k] of Object.entries(peak)) console.log(`  peak while ${p}: ${mib(k)} MiB (growth ${mib(k - before)} MiB)`)
      console.log('  target: growth ≤ 64 MiB while indexing')
    } finally {
      await d.stop()
    }
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exit(1) })
