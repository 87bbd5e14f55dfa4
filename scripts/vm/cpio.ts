// A minimal writer for the "newc" cpio format the kernel unpacks as an initramfs (so the guest
// runner needs no cpio binary on the host). Directories, regular files and device nodes only.

const MAGIC = '070701'
const TRAILER = 'TRAILER!!!'

export type CpioEntry =
  | { type: 'dir', name: string, mode?: number }
  | { type: 'file', name: string, data: Buffer, mode?: number }
  | { type: 'char', name: string, major: number, minor: number, mode?: number }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFCHR = 0o020000

export function writeCpio (entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = []
  let offset = 0
  let ino = 1
  const push = (b: Buffer): void => {
    parts.push(b)
    offset += b.length
    const pad = (4 - (offset % 4)) % 4
    if (pad) { parts.push(Buffer.alloc(pad)); offset += pad }
  }
  const record = (name: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0], nlink = 1): void => {
    const nameBytes = Buffer.from(name + '\0')
    const fields = [ino++, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0]
    const header = MAGIC + fields.map(n => n.toString(16).padStart(8, '0')).join('')
    // Header and name are padded together to a multiple of 4, then the data.
    push(Buffer.concat([Buffer.from(header, 'ascii'), nameBytes]))
    if (data.length) push(data)
  }
  for (const e of entries) {
    const name = e.name.replace(/^\/+/, '')
    if (e.type === 'dir') record(name, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), [0, 0], 2)
    else if (e.type === 'file') record(name, S_IFREG | (e.mode ?? 0o644), e.data)
    else record(name, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), [e.major, e.minor])
  }
  ino = 0
  record(TRAILER, 0, Buffer.alloc(0))
  return Buffer.concat(parts)
}
