// mmdebstrap (and debootstrap where mmdebstrap is missing), wrapped once: a Debian-style root
// tree in a directory, reproducible for a given SOURCE_DATE_EPOCH and mirror content.

import { execa } from 'execa'
import { aptFailure } from './apt.js'
import { run } from '../../tools/run.js'

export interface BootstrapOptions {
  release: string
  dir: string
  mirror: string
  variant: string
  arch: string
  components: string[]
  keyring?: string
  epoch: number
  signal?: AbortSignal
  onLine?: (line: string) => void
}

export function mmdebstrapArgs (o: BootstrapOptions): string[] {
  return [
    '--mode=root', '--format=directory',
    `--variant=${o.variant}`, `--architectures=${o.arch}`, `--components=${o.components.join(',')}`,
    ...(o.keyring ? [`--keyring=${o.keyring}`] : []),
    '--aptopt=Acquire::Retries "1"',
    // No fsync per file: the tree is written into the image by mke2fs, which the store syncs.
    '--dpkgopt=force-unsafe-io',
    // Host files mmdebstrap copies in for debootstrap compatibility, and the options above:
    // not part of the image.
    '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname" "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"',
    o.release, o.dir, o.mirror
  ]
}

// debootstrap knows fewer variants: minbase and buildd, else its default set.
export function debootstrapArgs (o: BootstrapOptions): string[] {
  const variant = ['minbase', 'buildd'].includes(o.variant) ? [`--variant=${o.variant}`] : []
  return [
    ...variant, `--arch=${o.arch}`, `--components=${o.components.join(',')}`,
    ...(o.keyring ? [`--keyring=${o.keyring}`] : []),
    o.release, o.dir, o.mirror
  ]
}

export async function hasMmdebstrap (): Promise<boolean> {
  const r = await execa('mmdebstrap', ['--version'], { reject: false })
  return r.exitCode === 0
}

export async function bootstrap (tool: 'mmdebstrap' | 'debootstrap', o: BootstrapOptions): Promise<void> {
  const args = tool === 'mmdebstrap' ? mmdebstrapArgs(o) : debootstrapArgs(o)
  // On cancel the tool unmounts its chroot's filesystems itself: give it time to.
  const r = await run(tool, args, { env: { SOURCE_DATE_EPOCH: String(o.epoch) }, signal: o.signal, onLine: o.onLine, pkg: tool, graceMs: 30_000 })
  if (r.exitCode !== 0) throw aptFailure(r.tail, `${tool} ${o.release}`)
}
