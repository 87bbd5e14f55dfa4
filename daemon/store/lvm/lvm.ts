// The one wrapper around the lvm2 tools (and dmsetup, thin_delta): a private runner that maps
// their stderr to error codes, and one exported function per verb the LVM store uses. State is
// always read in machine-readable form (`--reportformat json`, bytes without suffixes).

import { execa } from 'execa'
import {
  BAD_CONFIG, BAD_PARAMS, OsfarmError, STORE_FULL, TOOL_FAILED, TOOL_MISSING, VOLUME_BUSY, VOLUME_EXISTS,
  VOLUME_NOT_FOUND, type ErrorCode
} from '../../../protocol/errors.js'

const TIMEOUT_MS = 120_000
// Without udev (containers, the test guest) LVM must neither wait for udev nor ask it about
// devices, or lvcreate fails to wipe the new LV.
export const NO_UDEV_CONFIG = 'activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0 ' +
  'external_device_info_source="none" use_devicesfile=0} global{use_lvmpolld=0}'

export interface LvmContext {
  udev: boolean
  // Extra lvm.conf text for every command (`--config`).
  config?: string
}

export interface LvRow {
  name: string
  attr: string
  size: number
  dataPercent: number
  metadataPercent: number
  pool: string
  tags: string[]
  active: boolean
  thinId: number
  chunkSize: number
}

export interface VgRow {
  name: string
  extentSize: number
  free: number
}

// stderr patterns, first match wins. LVM words these the same way across 2.03.x.
const STDERR_CODES: Array<[RegExp, ErrorCode]> = [
  [/already exists in volume group/i, 'VOLUME_EXISTS'],
  [/Volume group "[^"]*" not found/i, 'BAD_CONFIG'],
  [/existing signature|Aborted wiping|Device \S+ excluded|Cannot use \S+: device/i, 'BAD_CONFIG'],
  [/Pool \S+ not found in Volume group/i, 'BAD_CONFIG'],
  [/Failed to find logical volume|not found in volume group|Snapshot origin LV \S+ not found/i, 'VOLUME_NOT_FOUND'],
  [/Insufficient (suitable allocatable extents|free space)|free space in thin pool|reached threshold|is full|out of data space/i, 'STORE_FULL'],
  [/in use|is open|open count|busy/i, 'VOLUME_BUSY'],
  [/are reserved|invalid|Please choose a different|Run `\S+ --help'/i, 'BAD_PARAMS']
]

const FACTORIES: Partial<Record<ErrorCode, (m?: string, d?: Record<string, unknown>) => OsfarmError>> = {
  VOLUME_EXISTS, BAD_CONFIG, VOLUME_NOT_FOUND, STORE_FULL, VOLUME_BUSY, BAD_PARAMS
}

// Runs `lvm VERB args…` (with the context's config) or another tool; on failure throws the
// mapped OsfarmError carrying the tool's own words.
async function run (ctx: LvmContext, cmd: 'lvm' | 'dmsetup' | 'thin_delta', args: string[]): Promise<string> {
  const config = configText(ctx)
  const argv = cmd === 'lvm' && config ? [args[0]!, '--config', config, ...args.slice(1)] : args
  const env: Record<string, string> = { LVM_SUPPRESS_FD_WARNINGS: '1' }
  if (!ctx.udev) env.DM_DISABLE_UDEV = '1'
  const r = await execa(cmd, argv, { reject: false, timeout: TIMEOUT_MS, env, stdin: 'ignore' })
  if ((r as { code?: string }).code === 'ENOENT') throw TOOL_MISSING(`${cmd} not found`, { tool: cmd })
  const what = cmd === 'lvm' ? args[0]! : cmd
  if (r.timedOut) throw TOOL_FAILED(`${what} timed out after ${TIMEOUT_MS} ms`, { tool: cmd, args: argv })
  if (r.exitCode === 0) return String(r.stdout)
  const stderr = String(r.stderr).split('\n').map(l => l.trim()).filter(l => l && !/^WARNING:/i.test(l)).join('; ')
  const details = { tool: cmd, args: argv, exitCode: r.exitCode, stderr }
  for (const [re, code] of STDERR_CODES) {
    if (re.test(stderr)) throw FACTORIES[code]!(`${what}: ${stderr}`, details)
  }
  throw TOOL_FAILED(`${what} failed (exit ${r.exitCode}): ${stderr}`, details)
}

function configText (ctx: LvmContext): string {
  return [ctx.udev ? '' : NO_UDEV_CONFIG, ctx.config ?? ''].filter(Boolean).join(' ')
}

// Opening /dev/mapper/control also loads dm-mod where it is a module not loaded yet.
export async function dmVersion (ctx: LvmContext): Promise<string> {
  return run(ctx, 'dmsetup', ['version'])
}

export async function listVg (ctx: LvmContext, vg: string): Promise<VgRow> {
  const json = await run(ctx, 'lvm', ['vgs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
    '-o', 'vg_name,vg_extent_size,vg_free', '--', vg])
  const row = (JSON.parse(json).report?.[0]?.vg ?? [])[0]
  if (!row) throw BAD_CONFIG(`volume group ${vg} not found`)
  return { name: row.vg_name, extentSize: Number(row.vg_extent_size), free: Number(row.vg_free) }
}

// Every (visible) LV of the VG.
export async function listLvs (ctx: LvmContext, vg: string): Promise<LvRow[]> {
  const json = await run(ctx, 'lvm', ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
    '-o', 'lv_name,lv_attr,lv_size,data_percent,metadata_percent,pool_lv,lv_tags,lv_active,thin_id,chunk_size', '--', vg])
  const rows: Array<Record<string, string>> = JSON.parse(json).report?.[0]?.lv ?? []
  return rows.map(r => ({
    name: r.lv_name!,
    attr: r.lv_attr!,
    size: Number(r.lv_size),
    dataPercent: Number(r.data_percent || 0),
    metadataPercent: Number(r.metadata_percent || 0),
    pool: r.pool_lv ?? '',
    tags: r.lv_tags ? r.lv_tags.split(',') : [],
    active: r.lv_active === 'active',
    thinId: Number(r.thin_id || -1),
    chunkSize: Number(r.chunk_size || 0)
  }))
}

// Without -y: LVM then refuses (stdin is closed, so every prompt is answered "no") to wipe a
// device that holds a filesystem or other signature, rather than destroying it.
export async function createPv (ctx: LvmContext, pvs: string[]): Promise<void> {
  await run(ctx, 'lvm', ['pvcreate', '--', ...pvs])
}

export async function createVg (ctx: LvmContext, vg: string, pvs: string[]): Promise<void> {
  await run(ctx, 'lvm', ['vgcreate', '--', vg, ...pvs])
}

// A thin pool on `percentFree` of the VG's free space (LVM sizes the metadata LV and its spare).
// Writes to a full pool fail at once instead of queuing for a minute.
export async function createThinPool (ctx: LvmContext, vg: string, pool: string, percentFree: number): Promise<void> {
  await run(ctx, 'lvm', ['lvcreate', '-y', '--type', 'thin-pool', '-l', `${percentFree}%FREE`, '-n', pool, '--', vg])
  await run(ctx, 'lvm', ['lvchange', '--errorwhenfull', 'y', '--', `${vg}/${pool}`])
}

export async function createThin (ctx: LvmContext, vg: string, pool: string, lv: string, size: number, tag: string): Promise<void> {
  await run(ctx, 'lvm', ['lvcreate', '-y', '-V', `${size}b`, '-T', `${vg}/${pool}`, '-n', lv, '--addtag', tag])
}

// A thin snapshot: no size, no copy. It keeps the activation-skip flag (so a host's boot does
// not activate every layer) and is activated here anyway (-K: `lvchange -ay -K` folded into the
// same command, one lvm run less).
export async function createSnapshot (ctx: LvmContext, vg: string, origin: string, lv: string, tag: string): Promise<void> {
  await run(ctx, 'lvm', ['lvcreate', '-y', '-s', '-K', '-n', lv, '--addtag', tag, '--', `${vg}/${origin}`])
}

export async function activate (ctx: LvmContext, vg: string, lvs: string[]): Promise<void> {
  if (lvs.length) await run(ctx, 'lvm', ['lvchange', '-ay', '-K', '--', ...lvs.map(lv => `${vg}/${lv}`)])
}

export async function setReadOnly (ctx: LvmContext, vg: string, lv: string): Promise<void> {
  await run(ctx, 'lvm', ['lvchange', '-p', 'r', '--', `${vg}/${lv}`])
}

export async function extend (ctx: LvmContext, vg: string, lv: string, size: number): Promise<void> {
  await run(ctx, 'lvm', ['lvextend', '-L', `${size}b`, '--', `${vg}/${lv}`])
}

export async function remove (ctx: LvmContext, vg: string, lvs: string[]): Promise<void> {
  if (lvs.length) await run(ctx, 'lvm', ['lvremove', '-y', '--', ...lvs.map(lv => `${vg}/${lv}`)])
}

// dm-thin keeps one metadata snapshot at a time; thin_delta reads it while the pool runs.
export async function poolMessage (ctx: LvmContext, dmName: string, message: string): Promise<void> {
  await run(ctx, 'dmsetup', ['message', dmName, '0', message])
}

// Ranges (in pool data blocks) where thin devices `a` and `b` map differently, from the
// pool's reserved metadata snapshot.
export async function thinDelta (ctx: LvmContext, metadataDevice: string, a: number, b: number): Promise<{ blockSectors: number, ranges: Array<[number, number]> }> {
  const xml = await run(ctx, 'thin_delta', ['-m', '--snap1', String(a), '--snap2', String(b), metadataDevice])
  const sb = /data_block_size="(\d+)"/.exec(xml)
  if (!sb) throw TOOL_FAILED(`thin_delta printed no superblock: ${xml.slice(0, 200)}`)
  const ranges: Array<[number, number]> = []
  for (const m of xml.matchAll(/<(different|left_only|right_only) begin="(\d+)" length="(\d+)"\/>/g)) {
    ranges.push([Number(m[2]), Number(m[3])])
  }
  return { blockSectors: Number(sb[1]), ranges }
}
