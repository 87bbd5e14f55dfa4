// A tiny root filesystem tarball from the host's busybox, for quick rootfs-flavour builds with
// no network: /bin/busybox and its applets as links, /etc/passwd and /etc/group for root, /root.

import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'

const APPLETS = ['sh', 'cat', 'echo', 'ls', 'ln', 'rm', 'mkdir', 'sleep', 'dd', 'touch', 'head']

// Makes the tree in `tree` (`change` edits it before it is packed) and packs it into `tarball`.
export async function busyboxRootfs (tree: string, tarball: string, change: (root: string) => Promise<void> = async () => {}): Promise<string> {
  await fs.mkdir(path.join(tree, 'bin'), { recursive: true })
  await fs.mkdir(path.join(tree, 'etc'), { recursive: true })
  await fs.mkdir(path.join(tree, 'root'), { recursive: true })
  await fs.copyFile('/bin/busybox', path.join(tree, 'bin/busybox'))
  for (const tool of APPLETS) await fs.symlink('busybox', path.join(tree, 'bin', tool)).catch(err => { if (err.code !== 'EEXIST') throw err })
  await fs.writeFile(path.join(tree, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
  await fs.writeFile(path.join(tree, 'etc/group'), 'root:x:0:\n')
  await change(tree)
  await execa('tar', ['-C', tree, '--numeric-owner', '-cf', tarball, '.'])
  return tarball
}
