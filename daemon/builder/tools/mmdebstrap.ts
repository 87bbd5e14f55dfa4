// mmdebstrap (and debootstrap where mmdebstrap is missing), wrapped once: a Debian-style root
// tree in a directory, reproducible for a given SOURCE_DATE_EPOCH and mirror content. The tool
// runs in a sandbox (sandbox/sandbox.ts): the proc, sys and dev mounts it makes in the tree
// live in the sandbox's mount namespace and die with it, its processes (hooks, dpkg,
// maintainer scripts) with its PID namespace; the host's tree is read-only to it except the
// build's scratch directory.

import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'
import { TOOL_MISSING } from '../../../protocol/errors.js'
import { aptFailure } from './apt.js'
import { readOnlyHostArgv } from '../sandbox/enter-root.js'
import { runTool } from '../sandbox/sandbox.js'

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
    // Removed from inside the tree (chroot), so the paths resolve in it.
    '--customize-hook=chroot "$1" rm -f /etc/resolv.conf /etc/hostname /etc/apt/apt.conf.d/99mmdebstrap /etc/dpkg/dpkg.cfg.d/99mmdebstrap',
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
  // The tree's parent is the build's scratch dir: writable, with the tool's temporary files.
  const scratch = path.dirname(o.dir)
  const tmp = path.join(scratch, 'tmp')
  await fs.mkdir(tmp, { recursive: true })
  const r = await runTool(readOnlyHostArgv([scratch], [tool, ...args]), {
    env: { SOURCE_DATE_EPOCH: String(o.epoch), TMPDIR: tmp },
    workDir: path.dirname(scratch),
    what: `${tool} ${o.release}`,
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onLine ? { onLine: o.onLine } : {})
  })
  if (r.tail.some(l => /^osfarm-sandbox: cannot run/.test(l))) throw TOOL_MISSING(`${tool} is not installed (apt-get install ${tool})`)
  if (r.exitCode !== 0) throw aptFailure(r.tail, `${tool} ${o.release}`)
}
