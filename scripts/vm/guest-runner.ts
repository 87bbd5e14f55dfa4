// Runs one shell command inside a throwaway QEMU microvm guest (TCG) booting Debian's kernel,
// for what this host's kernel cannot do (device-mapper, LVM). The guest sees the host root
// read-only (9p) under a tmpfs overlay, so the same node, dist/ and tools run inside; its disks
// are virtio-blk devices backed by sparse files; a writable 9p share carries the job in and its
// output and exit status out. DESIGN.md §6 has the measurements behind the recipe.

import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { BAD_PARAMS, TOOL_FAILED, TOOL_MISSING } from '../../protocol/errors.js'
import { ensureGuestAssets, GUEST_OUT_DIR, HOST_TAG, OUT_TAG } from './guest-assets.js'

const QEMU = 'qemu-system-x86_64'
const DEFAULT_TIMEOUT_MS = 120_000
const DEFAULT_MEMORY_MIB = 1024
const MAX_DISKS = 16
const CONSOLE_TAIL_BYTES = 4000
const WORK_PREFIX = 'osfarm-vm-'

export interface GuestDisk {
  // A sparse file backing the disk; made (or grown) to `size`. Without a path the runner makes a
  // temporary one and removes it afterwards.
  path?: string
  size: number
}

export interface RunInGuestOptions {
  // A shell script run by /bin/sh in the guest, as root, in `cwd` (default: process.cwd()).
  command: string
  cwd?: string
  // Guest disks in order; the guest finds their devices in $OSFARM_VM_DISKS (space-separated).
  disks?: GuestDisk[]
  env?: Record<string, string>
  timeoutMs?: number
  memoryMiB?: number
  // Called with output as the guest writes it (polled), for long runs.
  onStdout?: (text: string) => void
  onStderr?: (text: string) => void
}

export interface GuestResult {
  stdout: string
  stderr: string
  exitCode: number
  // From starting QEMU to the guest starting the command, and to QEMU's exit.
  bootMs: number
  totalMs: number
  kernelVersion: string
  // The serial console (kernel messages; quiet unless something went wrong).
  console: string
}

export async function qemuAvailable (): Promise<boolean> {
  const r = await execa(QEMU, ['--version'], { reject: false, timeout: 10_000 })
  return r.exitCode === 0
}

export async function runInGuest (options: RunInGuestOptions): Promise<GuestResult> {
  const disks = options.disks ?? []
  if (disks.length > MAX_DISKS) throw BAD_PARAMS(`at most ${MAX_DISKS} guest disks`)
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const assets = await ensureGuestAssets()
  await removeStaleWorkDirs()
  const work = await fs.mkdtemp(path.join(os.tmpdir(), `${WORK_PREFIX}${process.pid}-`))
  try {
    const out = path.join(work, 'out')
    await fs.mkdir(out)
    const diskFiles: string[] = []
    for (const [i, d] of disks.entries()) {
      if (!Number.isSafeInteger(d.size) || d.size <= 0 || d.size % 512 !== 0) throw BAD_PARAMS(`disk ${i}: size must be a positive multiple of 512`)
      const file = d.path ?? path.join(work, `disk${i}.raw`)
      const fh = await fs.open(file, 'a')
      try { if ((await fh.stat()).size < d.size) await fh.truncate(d.size) } finally { await fh.close() }
      diskFiles.push(file)
    }
    await fs.writeFile(path.join(out, 'job.sh'), jobScript(options, disks.length))

    const consoleLog = path.join(work, 'console.log')
    const args = [
      '-M', 'microvm', '-accel', 'tcg', '-cpu', 'max', '-m', String(options.memoryMiB ?? DEFAULT_MEMORY_MIB), '-smp', '1',
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-serial', `file:${consoleLog}`,
      '-kernel', assets.vmlinux, '-initrd', assets.initrd,
      '-append', `console=ttyS0 quiet panic=-1 rdinit=/init tsc_early_khz=${await hostTscKhz()} no_timer_check`,
      '-fsdev', 'local,id=r,path=/,security_model=none,readonly=on,multidevs=remap',
      '-device', `virtio-9p-device,fsdev=r,mount_tag=${HOST_TAG}`,
      '-fsdev', `local,id=o,path=${qemuOpt(out)},security_model=none`,
      '-device', `virtio-9p-device,fsdev=o,mount_tag=${OUT_TAG}`
    ]
    for (const [i, file] of diskFiles.entries()) {
      args.push('-drive', `if=none,id=d${i},file=${qemuOpt(file)},format=raw,cache=unsafe,discard=unmap`,
        '-device', `virtio-blk-device,drive=d${i},serial=osfarm-d${i}`)
    }

    const started = Date.now()
    const qemu = execa(QEMU, args, { reject: false, timeout: timeoutMs, forceKillAfterDelay: 2000, stdin: 'ignore' })
    const tails = [tail(path.join(out, 'stdout'), options.onStdout), tail(path.join(out, 'stderr'), options.onStderr)]
    let q
    try {
      q = await qemu
    } finally {
      for (const t of tails) t.stop()
    }
    const totalMs = Date.now() - started
    await Promise.all(tails.map(t => t.flush()))
    const console = await fs.readFile(consoleLog, 'utf8').catch(() => '')
    if ((q as { code?: string }).code === 'ENOENT') throw TOOL_MISSING(`${QEMU} not found: install qemu-system-x86`)
    if (q.timedOut) {
      throw TOOL_FAILED(`guest timed out after ${timeoutMs} ms`, { console: console.slice(-CONSOLE_TAIL_BYTES), stderr: await readOr(path.join(out, 'stderr')) })
    }
    const exitText = await readOr(path.join(out, 'exit'))
    if (!exitText) {
      throw TOOL_FAILED(`guest did not run its command (qemu exit ${q.exitCode}): ${String(q.stderr).trim()}`, { console: console.slice(-CONSOLE_TAIL_BYTES) })
    }
    // QEMU creates the marker on the host, so its mtime is on the host's clock.
    const marker = await fs.stat(path.join(out, 'started')).catch(() => undefined)
    const bootMs = marker ? marker.mtimeMs - started : -1
    return {
      stdout: await readOr(path.join(out, 'stdout')),
      stderr: await readOr(path.join(out, 'stderr')),
      exitCode: Number(exitText.trim()),
      bootMs: Math.round(bootMs),
      totalMs,
      kernelVersion: assets.kernelVersion,
      console
    }
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
}

// The guest names disks by probe order, which virtio-mmio does not promise to match the
// command line's, so each disk carries a serial and the job maps serials to devices.
function jobScript (options: RunInGuestOptions, diskCount: number): string {
  const lines = [
    'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'export HOME=/root',
    `: > ${GUEST_OUT_DIR}/started`,
    'OSFARM_VM_DISKS=""',
    `for i in $(seq 0 ${diskCount - 1}); do`,
    '  for s in /sys/block/vd*/serial; do',
    // eslint-disable-next-line no-template-curly-in-string -- shell parameter expansion
    '    [ "$(cat "$s")" = "osfarm-d$i" ] && d=${s%/serial} && OSFARM_VM_DISKS="$OSFARM_VM_DISKS /dev/${d##*/}"',
    '  done',
    'done',
    // eslint-disable-next-line no-template-curly-in-string -- shell parameter expansion
    'export OSFARM_VM_DISKS="${OSFARM_VM_DISKS# }"',
    'export OSFARM_IN_GUEST=1'
  ]
  for (const [k, v] of Object.entries(options.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw BAD_PARAMS(`bad environment name ${JSON.stringify(k)}`)
    lines.push(`export ${k}=${shellQuote(v)}`)
  }
  lines.push(`cd ${shellQuote(options.cwd ?? process.cwd())} || exit 125`, options.command, '')
  return lines.join('\n')
}

// A run killed with SIGKILL cannot clean up its work dir (and disk files); the next run removes
// those whose process is gone.
async function removeStaleWorkDirs (): Promise<void> {
  const names = await fs.readdir(os.tmpdir()).catch(() => [] as string[])
  for (const name of names) {
    const m = new RegExp(`^${WORK_PREFIX}(\\d+)-`).exec(name)
    if (!m || isAlive(Number(m[1]))) continue
    await fs.rm(path.join(os.tmpdir(), name), { recursive: true, force: true }).catch(() => {})
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// QEMU option values escape a comma by doubling it.
function qemuOpt (value: string): string {
  return value.replace(/,/g, ',,')
}

function shellQuote (s: string): string {
  return `'${s.replace(/'/g, '\'\\\'\'')}'`
}

// The guest's TSC runs at the host's rate under TCG; telling the kernel saves it calibrating
// against a clock microvm does not have (it can hang there). "cpu MHz" is the TSC rate on
// constant-TSC hosts; OSFARM_VM_TSC_KHZ overrides it where it is not.
async function hostTscKhz (): Promise<number> {
  if (process.env.OSFARM_VM_TSC_KHZ) return Number(process.env.OSFARM_VM_TSC_KHZ)
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8')
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)
  if (!m) throw TOOL_FAILED('cannot read the host CPU frequency from /proc/cpuinfo')
  return Math.round(Number(m[1]) * 1000)
}

async function readOr (file: string): Promise<string> {
  return fs.readFile(file, 'utf8').catch(() => '')
}

// Polls a growing file and hands new text to `on`.
function tail (file: string, on?: (text: string) => void): { stop: () => void, flush: () => Promise<void> } {
  let offset = 0
  let busy: Promise<void> = Promise.resolve()
  const read = async (): Promise<void> => {
    if (!on) return
    const fh = await fs.open(file, 'r').catch(() => undefined)
    if (!fh) return
    try {
      const { size } = await fh.stat()
      if (size <= offset) return
      const buf = Buffer.alloc(size - offset)
      const { bytesRead } = await fh.read(buf, 0, buf.length, offset)
      offset += bytesRead
      on(buf.subarray(0, bytesRead).toString())
    } finally { await fh.close() }
  }
  const timer = on ? setInterval(() => { busy = busy.then(read, read) }, 200) : undefined
  return {
    stop: () => { if (timer) clearInterval(timer) },
    flush: async () => { await busy; await read() }
  }
}
