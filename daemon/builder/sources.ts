// The files a spec builds from (files[].source, files[].content, rootfs) as daemon-owned copies
// named by their BLAKE3: a caller without root uploads each source (source.upload, streamed by
// osfarmctl with the caller's own rights); for root, osfarmd copies the named host file in
// itself, opened once, refused unless it is a regular file under the cap. A spec is then planned
// and built from these copies only, so no step reads a host path a spec names.

import fs from 'node:fs/promises'
import path from 'node:path'
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import { Blake3Hasher, type Blake3 } from '../blocks/hash.js'
import { BAD_PARAMS, OsfarmError, PERMISSION_DENIED, PROTOCOL_ERROR, SOURCE_CHANGED, SPEC_INVALID, STORE_FULL } from '../../protocol/errors.js'
import type { Rights, SourceInfo, SpecSource } from '../../protocol/rpc.js'
import { DATA, END, sendResult } from '../../protocol/stream.js'
import type { StreamRegistry } from '../rpc/streams.js'
import type { FileSpec, ImageSpec } from './spec.js'
import type { Logger } from '../log.js'
import { openSource, readChunks } from '../images/host-files.js'

// An upload nobody builds from is removed this long after it arrived or was last used.
const UNUSED_TTL_MS = 30 * 60_000
const SWEEP_MS = 60_000
const COPY_CHUNK = 1 << 20
// Copies held for a rebuild policy's life, by owner: kept across restarts.
const PIN_FILE = 'pinned.json'

export interface Source extends SourceInfo {
  path: string
}

export interface SourceLimits {
  // Per files[].source (and inline content), and per rootfs tarball.
  fileBytes: number
  rootfsBytes: number
}

interface Entry extends Source {
  usedAt: number
  users: number
}

export class SourceStore {
  readonly #dir: string
  readonly #streams: StreamRegistry
  readonly #limits: SourceLimits
  readonly #log: Logger
  readonly #entries = new Map<string, Entry>()
  // blake3 → the owners (rebuild policies) that keep it.
  readonly #pins = new Map<string, Set<string>>()
  #sweeper: NodeJS.Timeout | undefined

  constructor (opts: { dir: string, streams: StreamRegistry, limits: SourceLimits, log: Logger }) {
    this.#dir = opts.dir
    this.#streams = opts.streams
    this.#limits = opts.limits
    this.#log = opts.log
  }

  get limits (): SourceLimits { return this.#limits }

  // Copies a crashed run left are removed, except those pinned.
  async start (): Promise<void> {
    await fs.mkdir(this.#dir, { recursive: true, mode: 0o700 })
    let pins: Record<string, string[]> = {}
    try { pins = JSON.parse(await fs.readFile(path.join(this.#dir, PIN_FILE), 'utf8')) } catch {}
    for (const name of await fs.readdir(this.#dir)) {
      const file = path.join(this.#dir, name)
      const owners = /^[0-9a-f]{64}$/.test(name) && Array.isArray(pins[name]) ? pins[name] : undefined
      if (name === PIN_FILE) continue
      if (owners?.length) {
        const st = await fs.lstat(file)
        if (st.isFile()) {
          this.#entries.set(name, { blake3: name, size: st.size, path: file, usedAt: Date.now(), users: 1 })
          this.#pins.set(name, new Set(owners))
          continue
        }
      }
      await fs.rm(file, { recursive: true, force: true })
    }
    await this.#savePins()
    this.#sweeper = setInterval(() => { void this.#sweep() }, SWEEP_MS)
    this.#sweeper.unref()
  }

  stop (): void {
    clearInterval(this.#sweeper)
  }

  // source.upload: a stream whose bytes become a source; its RESULT is the SourceInfo.
  upload (size: number): { stream: string } {
    const max = Math.max(this.#limits.fileBytes, this.#limits.rootfsBytes)
    if (!Number.isSafeInteger(size) || size < 0) throw BAD_PARAMS('size must be a whole number of bytes')
    if (size > max) throw BAD_PARAMS(`a source may be at most ${max} bytes (maxSourceBytes, maxRootfsBytes)`)
    const { token, attached } = this.#streams.open()
    attached.then(conn => this.#receive(conn.socket, conn.frames(), size), () => {})
    return { stream: token }
  }

  async #receive (socket: net.Socket, frames: AsyncGenerator<{ type: number, offset: number, payload: Buffer }>, size: number): Promise<void> {
    socket.on('error', () => {})
    const tmp = path.join(this.#dir, `.upload-${randomBytes(8).toString('hex')}`)
    try {
      const fh = await fs.open(tmp, 'wx', 0o600)
      const hasher = new Blake3Hasher()
      let pos = 0
      try {
        let ended = false
        for await (const f of frames) {
          if (f.type === END) {
            if (f.offset !== size) throw SOURCE_CHANGED(`the upload ended at ${f.offset} bytes, not the ${size} announced`)
            ended = true
            break
          }
          if (f.type !== DATA || f.offset < pos) throw PROTOCOL_ERROR('a source upload carries DATA frames in order, then END')
          if (f.offset + f.payload.length > size) throw SOURCE_CHANGED(`the upload wrote past its announced size (${size} bytes)`)
          // Holes the caller skipped are zeros.
          if (f.offset > pos) hashZeros(hasher, f.offset - pos)
          hasher.update(f.payload)
          await writeAll(fh, f.payload, f.offset)
          pos = f.offset + f.payload.length
        }
        if (!ended) throw SOURCE_CHANGED('the upload closed before its end')
        if (size > pos) hashZeros(hasher, size - pos)
        await fh.truncate(size)
        await fh.sync()
      } finally {
        await fh.close()
      }
      const source = await this.#keep(tmp, hasher.digest('hex'), size)
      await sendResult(socket, { result: { blake3: source.blake3, size: source.size } satisfies SourceInfo })
    } catch (err) {
      await fs.rm(tmp, { force: true })
      const e = OsfarmError.from(err)
      if (!socket.destroyed) await sendResult(socket, { error: { code: e.code, message: e.text } }).catch(() => {})
    } finally {
      socket.end()
    }
  }

  // Moves a finished copy to its name (a copy of the same bytes may be there already).
  async #keep (tmp: string, blake3: string, size: number): Promise<Entry> {
    const final = path.join(this.#dir, blake3)
    await fs.rename(tmp, final)
    const entry = this.#entries.get(blake3) ?? { blake3, size, path: final, usedAt: 0, users: 0 }
    entry.usedAt = Date.now()
    this.#entries.set(blake3, entry)
    return entry
  }

  // Keeps copies for `owner` (a rebuild policy) until unpin(owner), across restarts.
  async pin (owner: string, hashes: string[]): Promise<void> {
    for (const h of new Set(hashes)) {
      const e = this.#entries.get(h)
      if (!e) throw BAD_PARAMS(`source ${h.slice(0, 12)}… is gone; upload it again`)
      const owners = this.#pins.get(h) ?? new Set<string>()
      if (!owners.size) e.users++
      owners.add(owner)
      this.#pins.set(h, owners)
    }
    await this.#savePins()
  }

  async unpin (owner: string): Promise<void> {
    for (const [h, owners] of this.#pins) {
      if (!owners.delete(owner) || owners.size) continue
      this.#pins.delete(h)
      const e = this.#entries.get(h)
      if (e) { e.users--; e.usedAt = Date.now() }
    }
    await this.#savePins()
  }

  async #savePins (): Promise<void> {
    const file = path.join(this.#dir, PIN_FILE)
    await fs.writeFile(file + '.tmp', JSON.stringify(Object.fromEntries([...this.#pins].map(([h, o]) => [h, [...o]]))), { mode: 0o600 })
    await fs.rename(file + '.tmp', file)
  }

  // The sources a spec names, by field, for a caller to upload (spec.sources).
  static named (spec: ImageSpec): SpecSource[] {
    const out: SpecSource[] = []
    spec.files.forEach((f, i) => { if (f.source !== undefined) out.push({ field: `files[${i}].source`, path: f.source }) })
    if (spec.rootfs !== undefined) out.push({ field: 'rootfs', path: spec.rootfs })
    return out
  }

  // The spec with every source replaced by a daemon-owned copy (Resolved.spec's files carry
  // `source` = that copy's path and `blob`), held until release().
  async resolve (spec: ImageSpec, rights: Rights, uploaded: Record<string, string> = {}): Promise<Resolved> {
    const held: Entry[] = []
    const hold = (e: Entry) => { e.users++; e.usedAt = Date.now(); held.push(e); return e }
    const release = () => { for (const e of held.splice(0)) { e.users--; e.usedAt = Date.now() } }
    try {
      const pick = async (field: string, hostPath: string, cap: number, limitKey: string): Promise<Entry> => {
        const hash = Object.hasOwn(uploaded, hostPath) ? uploaded[hostPath] : undefined
        if (hash !== undefined) {
          const e = this.#entries.get(hash)
          if (!e) throw BAD_PARAMS(`${field}: the upload of ${hostPath} (${hash.slice(0, 12)}…) is gone; upload it again`)
          if (e.size > cap) throw SPEC_INVALID(`${field}: ${hostPath} is ${e.size} bytes, over the limit of ${cap}`)
          return hold(e)
        }
        if (rights !== 'admin') throw PERMISSION_DENIED(`${field}: ${hostPath} is a host path, and osfarmd opens those only for root; upload it (osfarmctl build does, with your own rights)`)
        return hold(await this.#copyIn(field, hostPath, cap, limitKey))
      }
      const files: FileSpec[] = []
      for (const [i, f] of spec.files.entries()) {
        if (f.source !== undefined) {
          const e = await pick(`files[${i}].source`, f.source, this.#limits.fileBytes, 'maxSourceBytes')
          files.push({ ...f, source: e.path, blob: { blake3: e.blake3, size: e.size } })
        } else {
          const data = Buffer.from(f.content!, f.encoding === 'base64' ? 'base64' : 'utf8')
          const e = hold(await this.#putBuffer(data))
          const { content: _, ...rest } = f
          files.push({ ...rest, source: e.path, blob: { blake3: e.blake3, size: e.size } })
        }
      }
      const rootfs = spec.rootfs !== undefined ? (await pick('rootfs', spec.rootfs, this.#limits.rootfsBytes, 'maxRootfsBytes')).path : undefined
      return { spec: { ...spec, files, ...(rootfs !== undefined ? { rootfs } : {}) }, release }
    } catch (err) {
      release()
      throw err
    }
  }

  // Root's fast path: the host file, opened once without blocking (a FIFO or device is refused
  // before it is read), copied in under the cap while it is hashed.
  async #copyIn (field: string, hostPath: string, cap: number, limitKey: string): Promise<Entry> {
    const src = await openSource(hostPath, { field, maxBytes: cap, limitKey, code: 'SPEC_INVALID' })
    const tmp = path.join(this.#dir, `.copy-${randomBytes(8).toString('hex')}`)
    try {
      const out = await fs.open(tmp, 'wx', 0o600)
      const hasher = new Blake3Hasher()
      let pos = 0
      try {
        for await (const chunk of readChunks(src)) {
          hasher.update(chunk)
          await writeAll(out, chunk, pos)
          pos += chunk.length
        }
        await out.sync()
      } finally {
        await out.close()
      }
      return await this.#keep(tmp, hasher.digest('hex'), pos)
    } catch (err) {
      await fs.rm(tmp, { force: true })
      throw err
    } finally {
      await src.handle.close()
    }
  }

  async #putBuffer (data: Buffer): Promise<Entry> {
    const h = new Blake3Hasher()
    h.update(data)
    const blake3 = h.digest('hex')
    const known = this.#entries.get(blake3)
    if (known) return known
    const tmp = path.join(this.#dir, `.inline-${randomBytes(8).toString('hex')}`)
    await fs.writeFile(tmp, data, { mode: 0o600, flag: 'wx' }).catch(err => { throw err.code === 'ENOSPC' ? STORE_FULL(`no space left in ${this.#dir}`) : err })
    return this.#keep(tmp, blake3, data.length)
  }

  async #sweep (): Promise<void> {
    const now = Date.now()
    for (const [hash, e] of this.#entries) {
      if (e.users > 0 || now - e.usedAt < UNUSED_TTL_MS) continue
      this.#entries.delete(hash)
      await fs.rm(e.path, { force: true }).catch(err => this.#log.warn('removing an unused source failed', { error: String(err) }))
    }
  }
}

export interface Resolved {
  spec: ImageSpec
  // Lets the copies go (they stay for reuse until unused for a while).
  release: () => void
}

// Why a spec's or a call's URL is root's to give, if it is: osfarmd would read a host path
// (file:) or reach a service only this host's loopback offers.
export function hostUrlReason (field: string, uri: string): string | undefined {
  let url: URL
  try { url = new URL(uri) } catch { return undefined }
  if (url.protocol === 'file:') return `${field}: a file: URL reads a host path; only root may name one`
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  if (host === 'localhost' || host.endsWith('.localhost') || host === '::1' || host === '0.0.0.0' || host === '::' || (net.isIPv4(host) && host.startsWith('127.')) || /^::ffff:127\./.test(host)) {
    return `${field}: ${url.host} is this host's loopback; only root may point osfarmd at it`
  }
  return undefined
}

// The spec's mirror URLs a caller without root may not give.
export function specUrlReason (spec: ImageSpec): string | undefined {
  if (spec.mirror !== undefined) {
    const r = hostUrlReason('mirror', spec.mirror)
    if (r) return r
  }
  for (const [i, repo] of spec.repositories.entries()) {
    const r = hostUrlReason(`repositories[${i}].uri`, repo.uri)
    if (r) return r
  }
  return undefined
}

const ZEROS = Buffer.alloc(COPY_CHUNK)
function hashZeros (h: Blake3, n: number): void {
  for (; n > 0; n -= Math.min(n, ZEROS.length)) h.update(ZEROS.subarray(0, Math.min(n, ZEROS.length)))
}

async function writeAll (fh: fs.FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off).catch(err => {
      throw err.code === 'ENOSPC' ? STORE_FULL('no space left in the data dir for a spec source') : err
    })
    off += bytesWritten
  }
}
