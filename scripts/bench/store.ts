// npm run bench:store — how long a snapshot (prepare with a parent) takes for a 1 GiB and a
// 64 GiB volume holding the same data, on every backend: file (sparse copy, on the tmp dir),
// file (reflink, on a loop-mounted xfs) and lvm (thin snapshot, inside the QEMU guest).
// Snapshot time should follow the data a backend must copy, never the volume's size.

import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { createFileStore } from '../../daemon/store/file/file-store.js'
import type { LayerStore } from '../../daemon/store/layer-store.js'
import { qemuAvailable, runInGuest } from '../vm/guest-runner.js'

const GiB = 1024 ** 3
const MiB = 1024 ** 2
const SIZES = [1 * GiB, 64 * GiB]
// The same data in every volume: 16 runs of 4 MiB spread over the whole volume.
const RUNS = 16
const RUN_BYTES = 4 * MiB
const REPEATS = 3
const GUEST_TIMEOUT_MS = 300_000

interface Row {
  backend: string
  size: number
  data: number
  snapshotMs: number[]
}

async function benchStore (backend: string, store: LayerStore): Promise<Row[]> {
  const rows: Row[] = []
  const chunk = Buffer.alloc(RUN_BYTES, 0xa5)
  for (const size of SIZES) {
    const key = `bench-${size / GiB}g`
    const base = await store.prepare(key, { size })
    const fh = await fs.open(base.path, 'r+')
    try {
      for (let i = 0; i < RUNS; i++) await fh.write(chunk, 0, chunk.length, Math.floor(size / RUNS) * i)
      await fh.sync()
    } finally { await fh.close() }
    await store.commit(key)
    const times: number[] = []
    for (let r = 0; r < REPEATS; r++) {
      const started = performance.now()
      await store.prepare(`${key}-snap${r}`, { parent: key })
      times.push(performance.now() - started)
    }
    for (let r = 0; r < REPEATS; r++) await store.remove(`${key}-snap${r}`)
    await store.remove(key)
    rows.push({ backend, size, data: RUNS * RUN_BYTES, snapshotMs: times })
  }
  return rows
}

async function loopXfs (dir: string): Promise<string | undefined> {
  const image = path.join(dir, 'xfs.img')
  const mnt = path.join(dir, 'xfs')
  await fs.mkdir(mnt)
  await fs.writeFile(image, '')
  await fs.truncate(image, 2 * GiB)
  if ((await execa('mkfs.xfs', ['-q', '-m', 'reflink=1', image], { reject: false })).exitCode !== 0) return undefined
  if ((await execa('mount', ['-o', 'loop', image, mnt], { reject: false })).exitCode !== 0) return undefined
  return mnt
}

// Inside the guest: the lvm rows, as JSON on stdout.
async function guestMain (): Promise<void> {
  const { createLvmStore } = await import('../../daemon/store/lvm/lvm-store.js')
  const disk = (process.env.OSFARM_VM_DISKS ?? '').split(' ')[0]!
  const store = await createLvmStore({ vg: 'bench', pool: 'pool', pvs: [disk], udev: false })
  try {
    console.log(JSON.stringify(await benchStore('lvm thin (guest)', store)))
  } finally { await store.close() }
}

async function hostMain (): Promise<void> {
  const rows: Row[] = []
  const notes: string[] = []
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-bench-store-'))
  let mnt: string | undefined
  try {
    const fsType = (await execa('findmnt', ['-no', 'FSTYPE', '--target', dir])).stdout.trim()
    const copy = await createFileStore({ dir: path.join(dir, 'copy') })
    rows.push(...await benchStore(`file copy (${fsType})`, copy))
    mnt = await loopXfs(dir)
    if (mnt) rows.push(...await benchStore('file reflink (xfs)', await createFileStore({ dir: path.join(mnt, 'store') })))
    else notes.push('file reflink: skipped (cannot loop-mount xfs here; needs root)')

    if (await qemuAvailable()) {
      const r = await runInGuest({
        command: `exec ${process.execPath} ${fileURLToPath(import.meta.url)} --guest`,
        disks: [{ size: 8 * GiB }],
        timeoutMs: GUEST_TIMEOUT_MS
      })
      if (r.exitCode !== 0) throw new Error(`guest bench failed (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`)
      rows.push(...JSON.parse(r.stdout.trim().split('\n').pop()!) as Row[])
      notes.push(`lvm: QEMU TCG guest, ${r.kernelVersion}, command started ${r.bootMs} ms after launch; times include the store's own lvs scan`)
    } else notes.push('lvm: skipped (qemu-system-x86_64 is not installed)')
  } finally {
    if (mnt) await execa('umount', [mnt], { reject: false })
    await fs.rm(dir, { recursive: true, force: true })
  }
  printTable(rows)
  for (const n of notes) console.log(`  ${n}`)
}

function printTable (rows: Row[]): void {
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
  const header = ['backend', 'volume', 'data', `snapshot ms (median of ${REPEATS})`, 'runs', 'vs 1 GiB']
  const body = rows.map(r => {
    const small = rows.find(x => x.backend === r.backend && x.size === SIZES[0])!
    return [
      r.backend, `${r.size / GiB} GiB`, `${r.data / MiB} MiB`, median(r.snapshotMs).toFixed(1),
      r.snapshotMs.map(x => x.toFixed(0)).join(' / '), `${(median(r.snapshotMs) / median(small.snapshotMs)).toFixed(2)}×`
    ]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...body.map(b => b[i]!.length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ')
  console.log(line(header))
  console.log(widths.map(w => '-'.repeat(w)).join('  '))
  for (const b of body) console.log(line(b))
}

const main = process.argv.includes('--guest') ? guestMain : hostMain
main().catch(err => {
  console.error(err instanceof Error ? err.message : err)
  process.exitCode = 1
})
