// Exporting a bootable image for direct kernel boot: the image is the root filesystem on a
// whole virtio disk; its kernel and initrd (named in /etc/osfarm/boot.json by the boot step)
// are copied out with debugfs, no mount needed. Boot it with:
//   qemu-system-x86_64 -kernel vmlinuz -initrd initrd.img -append "<append>" \
//     -drive file=<image>,format=raw,if=virtio

import fs from 'node:fs/promises'
import path from 'node:path'
import { BUILD_FAILED } from '../../protocol/errors.js'
import { dumpFile, readFile } from './tools/mke2fs.js'
import { BOOT_INFO_PATH, type BootInfo } from './steps.js'

export interface BootExport extends BootInfo {
  // Host paths of the copied kernel and initrd.
  kernelFile: string
  initrdFile: string
}

export async function readBootInfo (volumePath: string): Promise<BootInfo | undefined> {
  const data = await readFile(volumePath, BOOT_INFO_PATH)
  if (!data) return undefined
  const info = JSON.parse(data.toString('utf8')) as BootInfo
  if (typeof info.kernel !== 'string' || typeof info.initrd !== 'string' || typeof info.append !== 'string') {
    throw BUILD_FAILED(`${BOOT_INFO_PATH} in the image is malformed`)
  }
  return info
}

export async function exportBoot (volumePath: string, outDir: string): Promise<BootExport> {
  const info = await readBootInfo(volumePath)
  if (!info) throw BUILD_FAILED('the image is not bootable (no /etc/osfarm/boot.json; build it with bootable: true)')
  await fs.mkdir(outDir, { recursive: true })
  const kernelFile = path.join(outDir, 'vmlinuz')
  const initrdFile = path.join(outDir, 'initrd.img')
  await dumpFile(volumePath, info.kernel, kernelFile)
  await dumpFile(volumePath, info.initrd, initrdFile)
  await fs.writeFile(path.join(outDir, 'boot.json'), JSON.stringify(info, null, 2) + '\n')
  return { ...info, kernelFile, initrdFile }
}

// QEMU's arguments for a direct kernel boot of an exported image; `snapshot` keeps the disk
// untouched (writes go to a temporary overlay).
export function qemuBootArgs (disk: string, boot: BootExport, o: { memoryMiB?: number, snapshot?: boolean, accel?: string } = {}): string[] {
  return [
    '-M', 'pc', '-accel', o.accel ?? 'tcg', '-m', String(o.memoryMiB ?? 1024), '-smp', '1',
    '-display', 'none', '-no-reboot', '-serial', 'stdio', '-monitor', 'none', '-nodefaults',
    '-kernel', boot.kernelFile, '-initrd', boot.initrdFile, '-append', boot.append,
    '-drive', `file=${disk},format=raw,if=virtio${o.snapshot === false ? '' : ',snapshot=on'}`
  ]
}
