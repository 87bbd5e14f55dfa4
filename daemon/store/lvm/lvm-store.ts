// The LVM backend: each volume is a thin LV in one thin pool, so a layer's child is a thin
// snapshot (instant, no space until written) and an image is a block device a VM can use as is.
//
// An LV is ours when it carries the `osfarm` tag and lives in our pool; its name is
// `osf-` + key with `_` spelled `+` (LVM reserves names containing `_tmeta`, `_rimage`, …, and
// keys never contain `+`). Its state is its permission: active volumes are writable, committing
// is `lvchange -p r`, one atomic metadata update. So after a crash every writable tagged LV in
// the pool is unfinished work, and recover() removes it; LVs without the tag are never touched.
// Snapshots keep LVM's activation-skip flag, so a host's boot activates none of the layers;
// the store activates a volume (`-K`) when it makes it and when it hands out its path.

import fs from 'node:fs/promises'
import {
  BACKEND_UNAVAILABLE, BAD_CONFIG, BAD_PARAMS, OsfarmError, STORE_FULL, VOLUME_EXISTS, VOLUME_NOT_FOUND
} from '../../../protocol/errors.js'
import { VOLUME_KEY, type LayerStore, type PrepareOptions, type StoreUsage, type VolumeInfo } from '../layer-store.js'
import * as lvm from './lvm.js'

const TAG = 'osfarm'
const PREFIX = 'osf-'
const DM_NAME_MAX = 127
const DEFAULT_MAX_FILL_PERCENT = 90
// A pool made by the store takes this share of the VG's free space (room for LVM's metadata
// spare and for growing the metadata LV).
const POOL_PERCENT_FREE = 90

export interface LvmStoreOptions {
  vg: string
  pool: string
  // PVs to make the VG and pool on when they do not exist yet. Without them both must exist.
  pvs?: string[]
  // Refuse new volumes once the pool's data or metadata use reaches this percentage.
  maxFillPercent?: number
  // false where no udev runs (containers, the test guest).
  udev?: boolean
  // Extra lvm.conf text passed to every lvm command.
  lvmConfig?: string
}

export async function createLvmStore (options: LvmStoreOptions): Promise<LayerStore> {
  const maxFill = options.maxFillPercent ?? DEFAULT_MAX_FILL_PERCENT
  if (!(maxFill > 0 && maxFill <= 100)) throw BAD_CONFIG(`maxFillPercent must be in (0, 100], got ${maxFill}`)
  if (!/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/.test(options.vg) || !/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/.test(options.pool)) {
    throw BAD_CONFIG(`bad volume group or pool name ${options.vg}/${options.pool}`)
  }
  const ctx: lvm.LvmContext = { udev: options.udev ?? true, config: options.lvmConfig }
  await checkHost(ctx)

  let vg = await lvm.listVg(ctx, options.vg).catch(err => {
    if (err instanceof OsfarmError && err.code === 'TOOL_MISSING') throw BACKEND_UNAVAILABLE('lvm: lvm2 is not installed')
    return notFoundAs(undefined)(err)
  })
  if (!vg) {
    if (!options.pvs?.length) throw BAD_CONFIG(`volume group ${options.vg} does not exist (give PVs to create it)`, { vg: options.vg })
    await lvm.createPv(ctx, options.pvs)
    await lvm.createVg(ctx, options.vg, options.pvs)
    vg = await lvm.listVg(ctx, options.vg)
  }
  let pool = (await lvm.listLvs(ctx, options.vg)).find(lv => lv.name === options.pool)
  if (!pool) {
    if (!options.pvs?.length) throw BAD_CONFIG(`thin pool ${options.vg}/${options.pool} does not exist (give PVs to create it)`, { vg: options.vg, pool: options.pool })
    await lvm.createThinPool(ctx, options.vg, options.pool, POOL_PERCENT_FREE)
    pool = (await lvm.listLvs(ctx, options.vg)).find(lv => lv.name === options.pool)
  }
  if (!pool || pool.attr[0] !== 't') throw BAD_CONFIG(`${options.vg}/${options.pool} is not a thin pool`)
  if (!pool.active) await lvm.activate(ctx, options.vg, [options.pool])
  return new LvmStore(ctx, options.vg, options.pool, vg.extentSize, maxFill)
}

// device-mapper is a kernel feature; the tools alone are not enough.
async function checkHost (ctx: lvm.LvmContext): Promise<void> {
  const misc = await fs.readFile('/proc/misc', 'utf8').catch(() => '')
  if (/\bdevice-mapper\b/.test(misc)) return
  await lvm.dmVersion(ctx).catch(err => {
    const why = err instanceof OsfarmError && err.code === 'TOOL_MISSING' ? 'dmsetup is not installed (lvm2)' : 'this kernel has no device-mapper (dm-mod)'
    throw BACKEND_UNAVAILABLE(`lvm: ${why}`)
  })
}

function notFoundAs<T> (value: T) {
  return (err: unknown): T => {
    if (err instanceof OsfarmError && (err.code === 'BAD_CONFIG' || err.code === 'VOLUME_NOT_FOUND')) return value
    throw err
  }
}

export function lvName (key: string): string {
  if (!VOLUME_KEY.test(key)) throw BAD_PARAMS(`bad volume key ${JSON.stringify(key)}`)
  return PREFIX + key.replace(/_/g, '+')
}

function keyOf (name: string): string | undefined {
  if (!name.startsWith(PREFIX)) return undefined
  const key = name.slice(PREFIX.length).replace(/\+/g, '_')
  return VOLUME_KEY.test(key) ? key : undefined
}

// device-mapper names are `vg-lv` with dashes inside each part doubled.
function dmName (vg: string, lv: string): string {
  return `${vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}`
}

class LvmStore implements LayerStore {
  readonly backend = 'lvm'
  readonly #ctx: lvm.LvmContext
  readonly #vg: string
  readonly #pool: string
  readonly #extent: number
  readonly #maxFill: number
  // dm-thin holds one metadata snapshot at a time.
  #metadataLock: Promise<unknown> = Promise.resolve()

  constructor (ctx: lvm.LvmContext, vg: string, pool: string, extentSize: number, maxFill: number) {
    this.#ctx = ctx
    this.#vg = vg
    this.#pool = pool
    this.#extent = extentSize
    this.#maxFill = maxFill
  }

  #name (key: string): string {
    const name = lvName(key)
    if (dmName(this.#vg, name).length > DM_NAME_MAX) throw BAD_PARAMS(`volume key ${key} is too long for a device-mapper name in ${this.#vg}`)
    return name
  }

  #roundUp (size: number): number {
    return Math.ceil(size / this.#extent) * this.#extent
  }

  // Our LVs and the pool, in one `lvs`.
  async #scan (): Promise<{ ours: Map<string, lvm.LvRow>, names: Set<string>, pool: lvm.LvRow }> {
    const rows = await lvm.listLvs(this.#ctx, this.#vg).catch(err => {
      if (err instanceof OsfarmError && err.code === 'BAD_CONFIG') throw BAD_CONFIG(`volume group ${this.#vg} is gone`, { vg: this.#vg })
      throw err
    })
    const pool = rows.find(r => r.name === this.#pool && r.attr[0] === 't')
    if (!pool) throw BAD_CONFIG(`thin pool ${this.#vg}/${this.#pool} is gone`, { vg: this.#vg, pool: this.#pool })
    const ours = new Map<string, lvm.LvRow>()
    for (const r of rows) {
      const key = keyOf(r.name)
      if (key && r.pool === this.#pool && r.tags.includes(TAG)) ours.set(key, r)
    }
    return { ours, names: new Set(rows.map(r => r.name)), pool }
  }

  #info (key: string, row: lvm.LvRow): VolumeInfo {
    return {
      key,
      kind: row.attr[1] === 'w' ? 'active' : 'committed',
      size: row.size,
      allocated: Math.round(row.size * row.dataPercent / 100),
      path: `/dev/${this.#vg}/${row.name}`
    }
  }

  #checkFill (pool: lvm.LvRow): void {
    const worst = Math.max(pool.dataPercent, pool.metadataPercent)
    if (worst >= this.#maxFill) {
      throw STORE_FULL(`thin pool ${this.#vg}/${this.#pool} is ${pool.dataPercent}% full (data), ${pool.metadataPercent}% (metadata); the limit is ${this.#maxFill}%`,
        { dataPercent: pool.dataPercent, metadataPercent: pool.metadataPercent, maxFillPercent: this.#maxFill })
    }
  }

  async prepare (key: string, options: PrepareOptions): Promise<VolumeInfo> {
    const name = this.#name(key)
    const { ours, names, pool } = await this.#scan()
    if (ours.has(key)) throw VOLUME_EXISTS(`volume ${key} exists`)
    if (names.has(name)) throw VOLUME_EXISTS(`an LV not made by osfarm is named ${this.#vg}/${name}`)
    this.#checkFill(pool)
    let size: number
    let allocated = 0
    if (options.parent !== undefined) {
      const parent = ours.get(options.parent)
      if (!parent) throw VOLUME_NOT_FOUND(`parent volume ${options.parent} not found`)
      if (parent.attr[1] === 'w') throw BAD_PARAMS(`parent volume ${options.parent} is not committed`)
      if (options.size !== undefined && (!Number.isSafeInteger(options.size) || options.size < 0)) throw BAD_PARAMS('bad size')
      await lvm.createSnapshot(this.#ctx, this.#vg, parent.name, name, TAG)
      size = parent.size
      allocated = this.#info(options.parent, parent).allocated
      if (options.size !== undefined && options.size > parent.size) {
        size = this.#roundUp(options.size)
        try {
          await lvm.extend(this.#ctx, this.#vg, name, size)
        } catch (err) {
          // Left writable, it would be recovered later anyway; remove it now so the key is free.
          await lvm.remove(this.#ctx, this.#vg, [name]).catch(() => {})
          throw err
        }
      }
    } else {
      if (options.size === undefined || !Number.isSafeInteger(options.size) || options.size <= 0) {
        throw BAD_PARAMS('an empty volume needs a size')
      }
      size = this.#roundUp(options.size)
      // A new thin LV is active (no skip flag) and reads as zeros.
      await lvm.createThin(this.#ctx, this.#vg, this.#pool, name, size, TAG)
    }
    return { key, kind: 'active', size, allocated, path: `/dev/${this.#vg}/${name}` }
  }

  // A thin snapshot of an LV outside the store (a VM's disk, /dev/VG/LV) in the store's own
  // pool, as a new active volume: a consistent point of a running disk, without a copy. Only
  // snapshotting is done to the foreign LV; it is never changed or removed.
  async snapshotOf (key: string, device: string): Promise<VolumeInfo> {
    const name = this.#name(key)
    const m = /^\/dev\/([^/]+)\/([^/]+)$/.exec(device)
    if (!m || m[1] !== this.#vg) throw BAD_PARAMS(`${device} is not an LV of volume group ${this.#vg} (want /dev/${this.#vg}/LV)`)
    const rows = await lvm.listLvs(this.#ctx, this.#vg)
    const origin = rows.find(r => r.name === m[2])
    const pool = rows.find(r => r.name === this.#pool && r.attr[0] === 't')
    if (!pool) throw BAD_CONFIG(`thin pool ${this.#vg}/${this.#pool} is gone`, { vg: this.#vg, pool: this.#pool })
    if (!origin || origin.pool !== this.#pool) throw BAD_PARAMS(`${device} is not a thin LV of pool ${this.#vg}/${this.#pool}`)
    if (rows.some(r => r.name === name)) throw VOLUME_EXISTS(`volume ${key} exists`)
    this.#checkFill(pool)
    await lvm.createSnapshot(this.#ctx, this.#vg, origin.name, name, TAG)
    const row = (await this.#scan()).ours.get(key)
    if (!row) throw VOLUME_NOT_FOUND(`snapshot ${key} of ${device} did not appear`)
    return this.#info(key, row)
  }

  async commit (key: string): Promise<VolumeInfo> {
    const name = this.#name(key)
    const row = (await this.#scan()).ours.get(key)
    if (!row || row.attr[1] !== 'w') throw VOLUME_NOT_FOUND(`no active volume ${key}`)
    if (row.active) {
      // Writers should have flushed; make sure before the volume becomes read-only.
      const fh = await fs.open(`/dev/${this.#vg}/${name}`, 'r+')
      try { await fh.sync() } finally { await fh.close() }
    }
    await lvm.setReadOnly(this.#ctx, this.#vg, name)
    return { ...this.#info(key, row), kind: 'committed' }
  }

  async remove (key: string): Promise<void> {
    const name = this.#name(key)
    if (!(await this.#scan()).ours.has(key)) throw VOLUME_NOT_FOUND(`volume ${key} not found`)
    await lvm.remove(this.#ctx, this.#vg, [name])
  }

  async stat (key: string): Promise<VolumeInfo | undefined> {
    this.#name(key)
    const row = (await this.#scan()).ours.get(key)
    if (!row) return undefined
    if (!row.active) await lvm.activate(this.#ctx, this.#vg, [row.name])
    return this.#info(key, row)
  }

  async list (): Promise<VolumeInfo[]> {
    const { ours } = await this.#scan()
    await lvm.activate(this.#ctx, this.#vg, [...ours.values()].filter(r => !r.active).map(r => r.name))
    return [...ours].map(([key, row]) => this.#info(key, row))
  }

  async usage (): Promise<StoreUsage> {
    const { ours, pool } = await this.#scan()
    const used = Math.round(pool.size * pool.dataPercent / 100)
    return { backend: this.backend, volumes: ours.size, bytesUsed: used, bytesFree: pool.size - used }
  }

  // One LV at a time, so one that something still holds open (left for the next start) does
  // not keep the others.
  // The pool's metadata snapshot, if a crash left it reserved (thin_delta in changedBlocks),
  // is released too: it pins metadata blocks and blocks the next delta.
  async recover (): Promise<string[]> {
    const removed: string[] = []
    await lvm.poolMessage(this.#ctx, await this.#poolDmName(), 'release_metadata_snap').catch(() => {})
    for (const [key, row] of (await this.#scan()).ours) {
      if (row.attr[1] !== 'w') continue
      try {
        await lvm.remove(this.#ctx, this.#vg, [row.name])
        removed.push(key)
      } catch (err) {
        if (!(err instanceof OsfarmError && err.code === 'VOLUME_BUSY')) throw err
      }
    }
    return removed
  }

  async close (): Promise<void> {
    await this.#metadataLock.catch(() => {})
  }

  // thin_delta compares the two devices' block mappings in a snapshot of the pool metadata: no
  // data is read, and the answer is exact to the pool's chunk size.
  async changedBlocks (key: string, parentKey: string): Promise<Array<[number, number]>> {
    this.#name(key)
    this.#name(parentKey)
    const { ours } = await this.#scan()
    const row = ours.get(key)
    const parent = ours.get(parentKey)
    if (!row) throw VOLUME_NOT_FOUND(`volume ${key} not found`)
    if (!parent) throw VOLUME_NOT_FOUND(`volume ${parentKey} not found`)
    const work = this.#metadataLock.catch(() => {}).then(() => this.#delta(parent.thinId, row.thinId))
    this.#metadataLock = work
    const { blockSectors, ranges } = await work
    const unit = blockSectors * 512
    const out: Array<[number, number]> = []
    for (const [begin, length] of ranges.sort((a, b) => a[0] - b[0])) {
      const start = begin * unit
      const len = length * unit
      const last = out[out.length - 1]
      if (last && last[0] + last[1] === start) last[1] += len
      else out.push([start, len])
    }
    return out
  }

  async #delta (a: number, b: number): Promise<{ blockSectors: number, ranges: Array<[number, number]> }> {
    const poolDm = await this.#poolDmName()
    const tmeta = `/dev/mapper/${dmName(this.#vg, this.#pool + '_tmeta')}`
    try {
      await lvm.poolMessage(this.#ctx, poolDm, 'reserve_metadata_snap')
    } catch {
      // A snapshot left reserved by a crashed run blocks a new one.
      await lvm.poolMessage(this.#ctx, poolDm, 'release_metadata_snap').catch(() => {})
      await lvm.poolMessage(this.#ctx, poolDm, 'reserve_metadata_snap')
    }
    try {
      return await lvm.thinDelta(this.#ctx, tmeta, a, b)
    } finally {
      await lvm.poolMessage(this.#ctx, poolDm, 'release_metadata_snap')
    }
  }

  // With thin volumes active LVM stacks the pool target under `<vg>-<pool>-tpool`.
  async #poolDmName (): Promise<string> {
    const base = dmName(this.#vg, this.#pool)
    const layered = `${base}-tpool`
    return fs.access(`/dev/mapper/${layered}`).then(() => layered, () => base)
  }
}
