// The main job, shown on one host: osfarmd on the file store, an image imported, indexed,
// verified and exported (raw and qcow2), with the figures.

import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { startDaemon, tempDir } from '../test/helpers/daemon.js'
import { makeImage } from '../test/helpers/images.js'

const MiB = 1 << 20

function step (text: string): void {
  console.log(`\n== ${text}`)
}

async function timed<T> (fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = process.hrtime.bigint()
  const r = await fn()
  return [r, Number(process.hrtime.bigint() - t0) / 1e9]
}

async function main (): Promise<void> {
  const dir = await tempDir('osfarm-demo-')
  const d = await startDaemon({ dir })
  try {
    console.log(`osfarmd running (pid ${d.proc.pid}), data in ${d.dataDir}, socket ${d.socket}`)
    const src = path.join(dir, 'disk.raw')
    step('a 256 MiB raw disk: random data, repeated blocks and zero runs')
    await makeImage(src, { blocks: 65_536, tail: 0 })

    step('osfarmctl image import disk.raw --name demo')
    const [img, importS] = await timed(() => d.ctlJson('image', 'import', src, '--name', 'demo'))
    const data = (img.blocks - img.zeroBlocks) * img.blockSize
    console.log(`imported in ${importS.toFixed(2)} s: root ${img.root.slice(0, 16)}…, ${img.blocks} blocks, ${img.zeroBlocks} zero (never hashed, stored as holes), ${(data / MiB).toFixed(0)} MiB of data`)

    step('osfarmctl image verify demo')
    const [v, verifyS] = await timed(() => d.ctlJson('image', 'verify', 'demo'))
    console.log(`${v.ok ? 'ok' : 'FAILED'}: ${v.blocks} blocks re-hashed in ${verifyS.toFixed(2)} s (${(img.size / verifyS / 1e9).toFixed(2)} GB/s)`)

    step('osfarmctl image export demo -o demo.raw, and --format qcow2')
    const raw = path.join(dir, 'demo.raw')
    const qcow = path.join(dir, 'demo.qcow2')
    await d.ctlJson('image', 'export', 'demo', '-o', raw)
    await d.ctlJson('image', 'export', 'demo', '-o', qcow, '--format', 'qcow2')
    const same = (await execa('cmp', [src, raw], { reject: false })).exitCode === 0
    const cmpQ = (await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, qcow], { reject: false })).exitCode === 0
    const allocated = (await fs.stat(raw)).blocks * 512
    console.log(`raw: ${same ? 'byte-identical' : 'DIFFERENT'}, ${(allocated / MiB).toFixed(0)} MiB allocated of ${(img.size / MiB).toFixed(0)} MiB; qcow2: ${cmpQ ? 'identical content (qemu-img compare)' : 'DIFFERENT'}`)

    step('osfarmctl image ls')
    console.log((await d.ctl('image', 'ls')).stdout.trimEnd())
    if (!same || !cmpQ || !v.ok) process.exitCode = 1
  } finally {
    await d.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); process.exit(1) })
