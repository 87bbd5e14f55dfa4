// mke2fs and friends (e2fsck, debugfs), wrapped once. Filesystems are made from a pinned
// configuration, not the host's /etc/mke2fs.conf, so one spec gives one layout on every host
// with the same e2fsprogs; time, UUID and hash seed come from the caller.

import fs from 'node:fs/promises'
import path from 'node:path'
import { IO_ERROR, SIZE_TOO_SMALL, TOOL_FAILED } from '../../../protocol/errors.js'
import { run, lastLines } from '../../tools/run.js'

// No journal: layers are written once by the builder and then read-only; a journal would only
// add blocks that differ from build to build (see the README's determinism notes).
const MKE2FS_CONF = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 1
	lazy_itable_init = false
	lazy_journal_init = false

[fs_types]
	ext4 = {
		features = extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize,^has_journal
	}
`

export interface MakeFsOptions {
  // Directory whose tree becomes the filesystem's content (mke2fs -d).
  from?: string
  uuid: string
  hashSeed: string
  label?: string
  // Seconds since the epoch for every time mke2fs writes.
  time: number
  confDir: string
  signal?: AbortSignal
  onLine?: (line: string) => void
}

export async function makeFs (device: string, options: MakeFsOptions): Promise<void> {
  const conf = path.join(options.confDir, 'mke2fs.conf')
  await fs.mkdir(options.confDir, { recursive: true })
  await fs.writeFile(conf, MKE2FS_CONF)
  const args = ['-q', '-F', '-t', 'ext4', '-U', options.uuid, '-E', `hash_seed=${options.hashSeed},nodiscard`, '-L', options.label ?? 'osfarm']
  if (options.from) args.push('-d', options.from)
  args.push('--', device)
  const r = await run('mke2fs', args, { env: e2fsEnv(options.time, conf), signal: options.signal, onLine: options.onLine, pkg: 'e2fsprogs' })
  if (r.exitCode === 0) return
  const out = r.tail.join('\n')
  if (/Could not allocate block|No space left|Could not allocate inode|too small|not enough space/i.test(out)) {
    throw SIZE_TOO_SMALL(`the filesystem is too small for the base content (${lastLines(r.tail, 2)})`)
  }
  throw TOOL_FAILED(`mke2fs failed (exit ${r.exitCode}): ${lastLines(r.tail)}`)
}

// A scratch filesystem in a sparse file (a step's overlay upper dir): no journal, inode tables
// left to be zeroed lazily (mounted noinit_itable: never, it is thrown away). Its size bounds
// what a step may write. The pinned configuration, UUID and hash seed matter: the merged view
// lists a directory in its upper dir's hash order, and a step's output can follow that order.
export async function makeScratchFs (file: string, bytes: number, confDir: string): Promise<void> {
  const conf = path.join(confDir, 'mke2fs.conf')
  await fs.writeFile(conf, MKE2FS_CONF)
  const fh = await fs.open(file, 'wx')
  try {
    await fh.truncate(Math.floor(bytes / 4096) * 4096)
  } finally {
    await fh.close()
  }
  const r = await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-U', SCRATCH_UUID, '-E', `lazy_itable_init=1,nodiscard,hash_seed=${SCRATCH_UUID}`, '-m', '0', '--', file], { env: e2fsEnv(BUILD_TIME_SCRATCH, conf), pkg: 'e2fsprogs' })
  if (r.exitCode !== 0) throw TOOL_FAILED(`mke2fs of a scratch filesystem failed (exit ${r.exitCode}): ${lastLines(r.tail)}`)
}

// After inode generations are reset, directory and extent blocks carry checksums made with
// the old ones: e2fsck -fy recomputes them. Exit 1 means it changed something, as expected.
export async function fixChecksums (device: string, time: number, signal?: AbortSignal): Promise<void> {
  const r = await run('e2fsck', ['-f', '-y', device], { env: e2fsEnv(time), signal, pkg: 'e2fsprogs' })
  if (r.exitCode !== 0 && r.exitCode !== 1) throw IO_ERROR(`e2fsck could not settle the layer (exit ${r.exitCode}): ${lastLines(r.tail)}`)
}

// A forced, read-only check.
export async function check (device: string, time: number, signal?: AbortSignal): Promise<void> {
  const r = await run('e2fsck', ['-f', '-n', device], { env: e2fsEnv(time), signal, pkg: 'e2fsprogs' })
  if (r.exitCode !== 0) throw IO_ERROR(`e2fsck found errors (exit ${r.exitCode}): ${lastLines(r.tail)}`)
}

// Puts back the superblock fields a mount changes (times, mount count, last mount point,
// bytes written) and sets the layer's UUID, so a layer's superblock depends on its key only.
export async function resetSuperblock (device: string, time: number, uuid: string): Promise<void> {
  const cmds = [
    'ssv mtime 0', `ssv wtime @${time}`, `ssv lastcheck @${time}`, 'ssv mnt_count 0',
    'ssv kbytes_written 0', 'ssv state 1'
  ]
  const r = await run('debugfs', ['-w', '-f', '-', device], { env: e2fsEnv(time), input: cmds.join('\n') + '\n', pkg: 'e2fsprogs' })
  if (r.exitCode !== 0 || r.tail.some(l => /^debugfs: .*(error|invalid|Unknown)/i.test(l) || /set_super_value: /.test(l))) {
    throw IO_ERROR(`debugfs could not reset the superblock: ${lastLines(r.tail)}`)
  }
  // tune2fs, not debugfs, for the UUID: it rewrites the backup superblocks too (e2fsck would
  // otherwise find them different and "repair" the image on its first boot). With
  // metadata_csum_seed no checksum depends on the UUID, so nothing else is rewritten.
  // -M '' zero-fills the last mount point (debugfs would leave the tail of the old path).
  const t = await run('tune2fs', ['-U', uuid, '-M', '', device], { env: e2fsEnv(time), pkg: 'e2fsprogs' })
  if (t.exitCode !== 0) throw IO_ERROR(`tune2fs -U failed: ${lastLines(t.tail)}`)
}

// Sets atime, ctime and crtime of the given inodes to `time` (and mtime, where it is later), and
// their change counter and generation to 0, on
// the unmounted filesystem: what mke2fs -d copies from the source tree and what a mounted step
// stamps with the clock, made the same on every build.
export async function normalizeTimes (device: string, time: number, inodes: Array<{ ino: number, late: boolean }>, clear: number[] = []): Promise<void> {
  if (!inodes.length && !clear.length) return
  // Free inodes that still hold a deleted file's record are zeroed, as mke2fs left them.
  // clri zeroes the first 128 bytes only; the extra fields' times and counter go too.
  const lines: string[] = clear.flatMap(ino => [`clri <${ino}>`, ...['ctime_extra', 'mtime_extra', 'atime_extra', 'crtime_extra', 'version'].map(f => `sif <${ino}> ${f} 0`), `sif <${ino}> crtime @0`])
  for (const { ino, late } of inodes) {
    for (const f of ['atime', 'ctime', 'crtime']) lines.push(`sif <${ino}> ${f} @${time}`, `sif <${ino}> ${f}_extra 0`)
    if (late) lines.push(`sif <${ino}> mtime @${time}`, `sif <${ino}> mtime_extra 0`)
    // The change counter and the (random) generation of a new inode vary from run to run too;
    // checksums that include the generation are redone by fixChecksums.
    lines.push(`sif <${ino}> version 0`, `sif <${ino}> generation 0`)
  }
  const r = await run('debugfs', ['-w', '-f', '-', device], { env: e2fsEnv(time), input: lines.join('\n') + '\n', pkg: 'e2fsprogs' })
  const bad = r.tail.find(l => /^(set_inode|debugfs:.*(error|invalid|Unknown))/i.test(l) || /: (Bad|Illegal|Invalid|Unknown) /.test(l))
  if (r.exitCode !== 0 || bad) throw IO_ERROR(`debugfs could not set inode times: ${bad ?? lastLines(r.tail)}`)
}

// Reads a file out of an unmounted filesystem (no mount needed); undefined if it is absent.
export async function readFile (device: string, file: string): Promise<Buffer | undefined> {
  const { execa } = await import('execa')
  const r = await execa('debugfs', ['-R', `cat "${file.replace(/"/g, '')}"`, device], { encoding: 'buffer', reject: false, stripFinalNewline: false, env: { LC_ALL: 'C', PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } })
  const err = Buffer.from(r.stderr as Uint8Array).toString()
  if (r.exitCode !== 0 || /File not found|not found by ext2_lookup/.test(err)) return undefined
  return Buffer.from(r.stdout as Uint8Array)
}

// Copies a file out of an unmounted filesystem to the host.
export async function dumpFile (device: string, file: string, to: string): Promise<void> {
  const r = await run('debugfs', ['-R', `dump "${file.replace(/"/g, '')}" "${to.replace(/"/g, '')}"`, device], { pkg: 'e2fsprogs' })
  const st = await fs.stat(to).catch(() => undefined)
  if (r.exitCode !== 0 || !st || r.tail.some(l => /not found|error/i.test(l))) throw IO_ERROR(`could not copy ${file} out of the image: ${lastLines(r.tail)}`)
}

const SCRATCH_UUID = '0f5c7a1e-3d2b-4c6a-9e8f-7a6b5c4d3e2f'
const BUILD_TIME_SCRATCH = 1704067200

function e2fsEnv (time: number, conf?: string): Record<string, string> {
  return { E2FSPROGS_FAKE_TIME: String(time), ...(conf ? { MKE2FS_CONFIG: conf } : {}) }
}
