// The LayerStore: where layers and images live as volumes, in containerd's snapshotter terms.
//
// A volume is a block-addressable byte range (a raw file, a thin LV) named by a key. Its life:
//   prepare(key, {parent})  → an *active* (writable) volume: a copy-on-write snapshot of the
//                             committed parent, or an empty (all-holes) volume of `size` bytes
//   commit(key)             → the volume becomes *committed*: read-only from then on
//   remove(key)             → gone; a committed parent may be removed while children live
// Active volumes are work in progress: after a crash `recover()` removes them, so a half-built
// layer or half-written import never survives a restart. Backends touch devices and files only;
// what a volume *means* (image, layer, manifest) lives in the catalog.

export type VolumeKind = 'active' | 'committed'

export interface VolumeInfo {
  key: string
  kind: VolumeKind
  // Apparent size in bytes.
  size: number
  // Bytes actually allocated (holes and shared extents are not counted where the backend knows).
  allocated: number
  // A path that can be opened for reading (and writing, while active): a file or block device.
  path: string
}

export interface StoreUsage {
  backend: string
  volumes: number
  bytesUsed: number
  bytesFree: number
}

export interface PrepareOptions {
  // A committed volume to snapshot. Without it the new volume is empty.
  parent?: string
  // Size of an empty volume, or a new (larger) size for a snapshot.
  size?: number
}

export interface LayerStore {
  readonly backend: string
  prepare (key: string, options: PrepareOptions): Promise<VolumeInfo>
  commit (key: string): Promise<VolumeInfo>
  remove (key: string): Promise<void>
  stat (key: string): Promise<VolumeInfo | undefined>
  list (): Promise<VolumeInfo[]>
  usage (): Promise<StoreUsage>
  // Remove active volumes left behind by a crash; returns their keys.
  recover (): Promise<string[]>
  // Byte ranges [start, length] where volume `key` may differ from `parentKey`, the volume it
  // was snapshotted from (directly or through committed ancestors), sorted and merged. A
  // superset: a block rewritten with the same bytes may be listed; anything not listed reads the
  // same in both (beyond the parent's size the parent counts as zeros). Backends that track
  // sharing (lvm: thin_delta on the pool's metadata) answer without reading data; others may
  // leave it undefined.
  changedBlocks? (key: string, parentKey: string): Promise<Array<[number, number]>>
  close (): Promise<void>
}

// Volume keys become file and LV names: keep them to a safe alphabet.
export const VOLUME_KEY = /^[a-z0-9][a-z0-9._-]{0,95}$/
