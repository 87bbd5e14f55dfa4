// mount, umount and losetup, wrapped once: attach a volume, mount its filesystem, bind the
// kernel filesystems a chroot needs, and take it all down again.

import fs from 'node:fs/promises'
import { IO_ERROR } from '../../../protocol/errors.js'
import { run, runOk, lastLines } from '../../tools/run.js'

// A regular file needs a loop device; a block device (an LV) mounts as it is.
export async function attach (volumePath: string): Promise<{ device: string, loop: boolean }> {
  const st = await fs.stat(volumePath)
  if (st.isBlockDevice()) return { device: volumePath, loop: false }
  const r = await runOk('losetup', ['--find', '--show', '--', volumePath], { pkg: 'mount' })
  return { device: r.stdout.trim(), loop: true }
}

export async function detach (device: string): Promise<void> {
  const r = await run('losetup', ['--detach', device])
  if (r.exitCode !== 0 && !/No such device|not found|failed to use device/i.test(r.tail.join('\n'))) {
    throw IO_ERROR(`losetup --detach ${device} failed: ${lastLines(r.tail)}`)
  }
}

export async function mount (source: string, target: string, options: { type?: string, options?: string[], bind?: boolean } = {}): Promise<void> {
  const args: string[] = []
  if (options.bind) args.push('--bind')
  if (options.type) args.push('-t', options.type)
  if (options.options?.length) args.push('-o', options.options.join(','))
  const r = await run('mount', [...args, '--', source, target], { pkg: 'mount' })
  if (r.exitCode !== 0) throw IO_ERROR(`mount ${source} on ${target} failed: ${lastLines(r.tail)}`)
}

// Unmounts; if the target is busy, kills what holds it (processes started in the chroot) and
// tries again before giving up.
export async function umount (target: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const r = await run('umount', ['--', target])
    if (r.exitCode === 0) return
    const why = r.tail.join('\n')
    if (/not mounted|no mount point specified|mountpoint not found/i.test(why)) return
    if (attempt >= 4) throw IO_ERROR(`umount ${target} failed: ${lastLines(r.tail)}`)
    await killRootedIn(target)
    await new Promise(resolve => setTimeout(resolve, 200 * (attempt + 1)))
  }
}

// Discards the free blocks of a mounted filesystem (on a loop device: holes in the file).
export async function trim (target: string): Promise<void> {
  const r = await run('fstrim', ['--', target], { pkg: 'util-linux' })
  if (r.exitCode !== 0 && !/not supported|the discard operation is not supported/i.test(r.tail.join('\n'))) {
    throw IO_ERROR(`fstrim ${target} failed: ${lastLines(r.tail)}`)
  }
}

// Mount points at or under dir, deepest first (from /proc/self/mountinfo).
export async function mountsUnder (dir: string): Promise<string[]> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8')
  const points = info.split('\n').filter(Boolean).map(line => unescapeMount(line.split(' ')[4]!))
  return points.filter(p => p === dir || p.startsWith(dir + '/')).sort((a, b) => b.length - a.length)
}

// Kills processes whose root or working directory lies in dir (a chroot's leftovers, such as
// a daemon a maintainer script started despite policy-rc.d).
export async function killRootedIn (dir: string): Promise<number[]> {
  const killed: number[] = []
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    for (const link of ['root', 'cwd']) {
      const target = await fs.readlink(`/proc/${name}/${link}`).catch(() => '')
      if (target === dir || target.startsWith(dir + '/')) {
        try { process.kill(Number(name), 'SIGKILL'); killed.push(Number(name)) } catch {}
        break
      }
    }
  }
  return killed
}

function unescapeMount (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

// Every loop device with its backing file (" (deleted)" taken off: the file is gone).
export async function loopDevices (): Promise<Array<{ device: string, file: string }>> {
  const r = await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], { pkg: 'mount' })
  if (r.exitCode !== 0 || !r.stdout.trim()) return []
  const rows = (JSON.parse(r.stdout) as { loopdevices?: Array<{ name: string, 'back-file': string | null }> }).loopdevices ?? []
  return rows.map(l => ({ device: l.name, file: (l['back-file'] ?? '').replace(/ \(deleted\)$/, '') }))
}
