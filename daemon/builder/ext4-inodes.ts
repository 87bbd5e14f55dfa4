// Reads an unmounted ext4 filesystem's group descriptors and inode bitmaps: the inodes in use
// (a new base's, whose times mke2fs copied from the source tree), and free inodes whose records
// are not zero: files a step created and deleted again (temporary files, a replaced config)
// leave their old times and random generation behind, which would differ from build to build.
// The builder sets the former's times and clears the latter before a layer is committed.

import fs from 'node:fs/promises'
import { IO_ERROR } from '../../protocol/errors.js'

const SUPERBLOCK_OFFSET = 1024
const EXT4_MAGIC = 0xef53
const INCOMPAT_64BIT = 0x80
const BG_INODE_UNINIT = 0x1

export interface InodeScan {
  // Inodes in use.
  used: number[]
  // Free inodes whose records are not all zero.
  dirtyFree: number[]
}

export async function scanInodes (device: string): Promise<InodeScan> {
  const fh = await fs.open(device, 'r')
  try {
    const read = async (offset: number, length: number) => {
      const buf = Buffer.alloc(length)
      const { bytesRead } = await fh.read(buf, 0, length, offset)
      if (bytesRead !== length) throw IO_ERROR(`short read of ${device} at ${offset}`)
      return buf
    }
    const sb = await read(SUPERBLOCK_OFFSET, 1024)
    if (sb.readUInt16LE(0x38) !== EXT4_MAGIC) throw IO_ERROR(`${device} holds no ext4 filesystem`)
    const inodesCount = sb.readUInt32LE(0x0)
    const firstDataBlock = sb.readUInt32LE(0x14)
    const blockSize = 1024 << sb.readUInt32LE(0x18)
    const inodesPerGroup = sb.readUInt32LE(0x28)
    const inodeSize = sb.readUInt16LE(0x58)
    const is64 = (sb.readUInt32LE(0x60) & INCOMPAT_64BIT) !== 0
    const descSize = is64 ? sb.readUInt16LE(0xfe) : 32
    const groups = Math.ceil(inodesCount / inodesPerGroup)
    const descs = await read((firstDataBlock + 1) * blockSize, groups * descSize)
    const zero = Buffer.alloc(inodeSize)
    const dirty: number[] = []
    const inUse: number[] = []
    for (let g = 0; g < groups; g++) {
      const d = descs.subarray(g * descSize, (g + 1) * descSize)
      if (d.readUInt16LE(0x12) & BG_INODE_UNINIT) continue
      const hi = (o: number) => (is64 ? d.readUInt32LE(o) * 2 ** 32 : 0)
      const bitmapBlock = d.readUInt32LE(0x4) + hi(0x24)
      const tableBlock = d.readUInt32LE(0x8) + hi(0x28)
      const unused = d.readUInt16LE(0x1c) + (is64 ? d.readUInt16LE(0x32) << 16 : 0)
      const used = inodesPerGroup - unused
      if (used <= 0) continue
      const bitmap = await read(bitmapBlock * blockSize, Math.ceil(inodesPerGroup / 8))
      const table = await read(tableBlock * blockSize, used * inodeSize)
      for (let i = 0; i < used; i++) {
        if (bitmap[i >> 3]! & (1 << (i & 7))) { inUse.push(g * inodesPerGroup + i + 1); continue }
        if (!table.subarray(i * inodeSize, (i + 1) * inodeSize).equals(zero)) dirty.push(g * inodesPerGroup + i + 1)
      }
    }
    return { used: inUse, dirtyFree: dirty }
  } finally {
    await fh.close()
  }
}
