// npm run bench:prestage — pre-staging a VM disk on the network lab: a 2 GiB disk cloned from
// a real Debian image (scripts/bench/debian-images.sh) held by both hosts, with 1%, 5% and 20%
// of its blocks then overwritten with random data (incompressible: the worst case). For each,
// `prestage start` (first stage) and, after as many blocks again are overwritten, `prestage
// sync`: wall seconds, the source's indexing time, the target's fetch time, bytes through the
// target's link (everything: framing, DHT, acks) and the payload the fetch counted.
//
// Data dirs and disks live on an XFS loop mount with reflink, so points are reflink clones and
// are indexed from extent maps. Its own lab (LAB_PREFIX=osfp). Needs root.
// Env: BENCH_RATES=1gbit,100mbit  BENCH_CHANGES=1,5,20  BENCH_IMAGE=path

import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes, randomInt } from 'node:crypto'
import { execa } from 'execa'
import type { ImageInfo, PrestageInfo } from '../../protocol/rpc.js'
import { Lab, ROOT, load, mountXfs, waitJob, type Host } from './lab-hosts.js'

const IMAGES = process.env.OUT ?? '/var/tmp/osfarm-bench'
const WORK = process.env.BENCH_WORK ?? '/var/tmp/osfarm-prestage-bench'
const RATES = (process.env.BENCH_RATES ?? '1gbit').split(',')
const CHANGES = (process.env.BENCH_CHANGES ?? '1,5,20').split(',').map(Number)
const BS = 4096

// Overwrites `fraction` of the disk's blocks, picked at random, with random bytes.
async function scribble (disk: string, fraction: number): Promise<number> {
  const fh = await fs.open(disk, 'r+')
  try {
    const blocks = Math.floor((await fh.stat()).size / BS)
    const want = Math.round(blocks * fraction)
    const picked = new Set<number>()
    while (picked.size < want) picked.add(randomInt(blocks))
    const sorted = [...picked].sort((a, b) => a - b)
    for (let k = 0; k < sorted.length;) {
      // Runs of neighbours in one write.
      let n = 1
      while (k + n < sorted.length && n < 256 && sorted[k + n] === sorted[k]! + n) n++
      await fh.write(randomBytes(n * BS), 0, n * BS, sorted[k]! * BS)
      k += n
    }
    await fh.sync()
    return want
  } finally {
    await fh.close()
  }
}

interface Step { label: string, seconds: number, linkBytes: number, info: PrestageInfo, written: number }

async function step (lab: Lab, source: Host, label: string, written: number, run: () => Promise<{ id: string }>): Promise<Step> {
  const before = await lab.linkBytes(2)
  const t0 = performance.now()
  const job = await waitJob(source, (await run()).id)
  const seconds = (performance.now() - t0) / 1000
  if (job.state !== 'done') throw new Error(`${label} failed: ${job.error?.message}`)
  return { label, seconds, linkBytes: await lab.linkBytes(2) - before, info: job.result as PrestageInfo, written }
}

function row (pct: number, s: Step, dataBytes: number): string {
  const p = s.info.points[s.info.points.length - 1]!
  const st = s.info.target?.stats
  const phases = st?.phases ? Object.entries(st.phases).map(([k, v]) => `${k} ${(Number(v) / 1000).toFixed(2)}`).join(', ') : ''
  return `| ${pct}% | ${s.label} | ${s.written} | ${s.seconds.toFixed(2)} | ${(p.indexMs / 1000).toFixed(2)} (${p.index}, ${p.hashedBlocks} hashed) | ${st ? (st.elapsedMs / 1000).toFixed(2) : '-'} | ${st?.received ?? '-'} | ${(s.linkBytes / 1e6).toFixed(1)} | ${st ? ((st.wireBytes) / 1e6).toFixed(1) : '-'} | ${st ? (st.manifestBytes / 1024).toFixed(0) : '-'} | ${(100 * s.linkBytes / dataBytes).toFixed(1)}% | ${phases} |`
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the bench needs root (network namespaces, mounts)')
  let image = process.env.BENCH_IMAGE
  if (!image) {
    const build = await execa('bash', [path.join(ROOT, 'scripts/bench/debian-images.sh')], { env: { OUT: IMAGES }, reject: false, timeout: 30 * 60_000 })
    if (build.exitCode !== 0) throw new Error(`building the Debian images failed: ${build.stderr}`)
    image = path.join(IMAGES, 'ssh.img')
  }
  await fs.mkdir(WORK, { recursive: true })
  const mnt = path.join(WORK, 'xfs')
  const unmount = await mountXfs(path.join(WORK, 'xfs.img'), mnt, '16G')
  const lab = new Lab('osfp')
  try {
    await lab.up(2, RATES[0]!)
    const source = await lab.startHost('p1', '10.201.1.2', path.join(mnt, 'p1'))
    const target = await lab.startHost('p2', '10.201.2.2', path.join(mnt, 'p2'))
    await lab.fleet([source, target])
    const imports = await Promise.all([source, target].map(async h => waitJob(h, (await h.client.call('image.import', { path: image!, name: 'base' })).id)))
    const img = imports[0]!.result as ImageInfo
    const baseData = (img.blocks - img.zeroBlocks) * img.blockSize
    console.log(`\n## Pre-staging a ${(img.size / 2 ** 30).toFixed(0)} GiB disk made from ${path.basename(image)} (${(baseData / 1e6).toFixed(0)} MB of data), the target holding the image; random data written`)
    for (const rate of RATES) {
      await lab.lab('rate', rate)
      console.log(`\n### ${rate} (${load()})`)
      console.log('| changed | step | blocks written | wall s | source index s | target fetch s | blocks received | link MB | payload MB | manifest KiB | link / disk data | target phases s |')
      console.log('|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|')
      for (const pct of CHANGES) {
        const disk = path.join(mnt, `disk-${pct}.raw`)
        await execa('cp', ['--reflink=always', path.join(source.dir, 'data', 'volumes', `${img.volume}.img`), disk])
        await fs.chmod(disk, 0o644)
        const w1 = await scribble(disk, pct / 100)
        const data1 = baseData + w1 * BS
        const first = await step(lab, source, 'first stage', w1, () => source.client.call('prestage.start', { disk, to: target.key, base: 'base' }))
        console.log(row(pct, first, data1))
        const w2 = await scribble(disk, pct / 100)
        const sync = await step(lab, source, 'sync', w2, () => source.client.call('prestage.sync', { id: first.info.id }))
        console.log(row(pct, sync, data1 + w2 * BS))
        // Check the copy, then clean up.
        const onTarget = await target.client.call('prestage.get', { id: first.info.id })
        const [a, b] = await Promise.all([disk, onTarget.path!].map(f => execa('sha256sum', [f]).then(r => r.stdout.split(' ')[0])))
        if (a !== b) throw new Error(`the target's copy differs from the disk (${pct}%)`)
        await source.client.call('prestage.cancel', { id: first.info.id })
        await fs.rm(disk, { force: true })
      }
    }
    console.log(`\nEvery copy checked byte-identical (sha256) after its sync. Link MB: both directions of the target's link; payload: block data as sent (zstd where it pays; random data does not compress). (${load()})`)
  } finally {
    await lab.down()
    await unmount()
  }
}

main().then(() => process.exit(0), err => {
  console.error(err)
  process.exit(1)
})
