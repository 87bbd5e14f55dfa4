// The peer protocol's codec: message types, frames and their limits, advert signing bytes.
// Schema: protocol/wire.proto. Frame: u32 BE length | u8 type | protobuf body, where length
// counts the type byte and the body. Types and fields are only ever appended; anything unknown,
// malformed or oversize throws PROTOCOL_ERROR, which ends the session that read it.

import fs from 'node:fs'
import { createRequire } from 'node:module'
import { PROTOCOL_ERROR, FRAME_TOO_LARGE } from './errors.js'

export const WIRE_VERSION = 1
// Fits a response of MAX_BLOCK_BYTES raw bytes that did not compress, plus its header.
export const MAX_BLOCK_BYTES = 1 << 20
export const MAX_FRAME_BYTES = MAX_BLOCK_BYTES + (64 << 10)
export const MAX_MANIFEST_CHUNK = 1 << 20
export const MAX_HASHES_PER_REQUEST = 1024
export const MAX_ADVERTS_PER_FRAME = 1000
export const MAX_HAVE_BITS = 8 * (512 << 10)
export const HASH_BYTES = 32

export const Codec = { RAW: 0, ZSTD: 1, LZ4: 2 } as const
export type CodecId = typeof Codec[keyof typeof Codec]

export interface Advert {
  root: Buffer
  name: string
  size: number
  blockSize: number
  specKey?: Buffer | null
  builder: Buffer
  signature: Buffer
  // Appended (fields 8–10): trusted only with a valid extSignature (advertExtSigningBytes).
  created?: number | null
  labels?: string[]
  extSignature?: Buffer | null
  // Appended (fields 11–12): trusted only with a valid revSignature (advertRevSigningBytes).
  revision?: number | null
  revSignature?: Buffer | null
  // Appended (fields 13–14): trusted only with a valid verSignature (advertVerSigningBytes).
  version?: number | null
  verSignature?: Buffer | null
}
export interface Hello { version: number, host: string, codecs: CodecId[], maxFrame?: number | null, adverts: Advert[], features?: string[], lanePort?: number | null }
export interface Adverts { adverts: Advert[] }
export interface ManifestRequest { id: number, root: Buffer, offset?: number | null, base?: Buffer | null, length?: number | null }
export interface ManifestResponse { id: number, total: number, offset: number, data: Buffer, delta?: boolean | null }
export interface Have { root: Buffer, start: number, bitfield: Buffer, complete?: boolean | null }
export interface BlockRequest { id: number, hashes: Buffer, background?: boolean | null, root?: Buffer | null }
export interface BlockResponse { id: number, codec: CodecId, sizes: number[], data: Buffer }
export interface WireError { id?: number | null, code: string, message?: string | null }
export interface Cancel { id: number }
export interface Withdraw { roots: Buffer[] }
export interface Stage { id: string, seq: number, root?: Buffer | null, name?: string | null, size?: number | null, base?: Buffer | null, image?: Buffer | null, cancel?: boolean | null }
export interface StageStatus { id: string, seq: number, state: string, done?: number | null, total?: number | null, message?: string | null, stats?: string | null, root?: Buffer | null }
export interface SeedDefaults { version: number, policies: string, author: Buffer, signature: Buffer }

// What this version understands beyond wire version 1 (sent in Hello.features).
export const FEATURES = ['withdraw', 'stage', 'seed-defaults', 'manifest-delta', 'manifest-range', 'manifest-delta-runs', 'tcp-lane', 'offers'] as const
export type Feature = typeof FEATURES[number]
export const MAX_LABELS = 32
export const MAX_SEED_DEFAULTS_BYTES = 64 << 10

// Type numbers are only ever appended.
export const TYPES = {
  Hello: 1,
  Adverts: 2,
  ManifestRequest: 3,
  ManifestResponse: 4,
  Have: 5,
  BlockRequest: 6,
  BlockResponse: 7,
  Error: 8,
  Cancel: 9,
  Withdraw: 10,
  Stage: 11,
  StageStatus: 12,
  SeedDefaults: 13,
  Offers: 14
} as const

export interface MessageMap {
  Hello: Hello
  Adverts: Adverts
  ManifestRequest: ManifestRequest
  ManifestResponse: ManifestResponse
  Have: Have
  BlockRequest: BlockRequest
  BlockResponse: BlockResponse
  Error: WireError
  Cancel: Cancel
  Withdraw: Withdraw
  Stage: Stage
  StageStatus: StageStatus
  SeedDefaults: SeedDefaults
  Offers: Adverts
}
export type MessageName = keyof MessageMap
export type Message = { [K in MessageName]: { type: K, body: MessageMap[K] } }[MessageName]

interface Encoding<T> {
  encode (value: T, buf?: Buffer, offset?: number): Buffer
  encodingLength (value: T): number
  decode (buf: Buffer): T
}

const require = createRequire(import.meta.url)
const protobuf = require('protocol-buffers') as (schema: Buffer | string) => Record<string, Encoding<unknown>>
const schema = loadSchema()
const NAMES = Object.keys(TYPES) as MessageName[]
const BY_TYPE: Array<MessageName | undefined> = []
for (const name of NAMES) BY_TYPE[TYPES[name]] = name

// The .proto sits next to this module in the source tree; from dist/protocol it is two up.
function loadSchema (): Record<string, Encoding<unknown>> {
  for (const rel of ['./wire.proto', '../../protocol/wire.proto']) {
    try {
      return protobuf(fs.readFileSync(new URL(rel, import.meta.url)))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  throw new Error('protocol/wire.proto not found')
}

// The frame is encoded in place, in a buffer from `alloc` (a secret stream's own, which it then
// encrypts in place: a block response is written once, not copied three times).
export function encodeFrame<K extends MessageName> (type: K, body: MessageMap[K], alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
  const enc = schema[type]!
  const length = enc.encodingLength(body)
  if (length + 1 > MAX_FRAME_BYTES) throw FRAME_TOO_LARGE(`${type} of ${length} bytes`)
  const frame = alloc(5 + length)
  frame.writeUInt32BE(length + 1, 0)
  frame.writeUInt8(TYPES[type], 4)
  enc.encode(body, frame, 5)
  return frame
}

// Decodes one frame's type byte and body (without the length prefix), and checks the limits
// protobuf cannot express. Throws PROTOCOL_ERROR.
export function decodeMessage (frame: Buffer): Message {
  if (frame.length < 1) throw PROTOCOL_ERROR('empty frame')
  const name = BY_TYPE[frame[0]!]
  if (!name) throw PROTOCOL_ERROR(`unknown message type ${frame[0]}`)
  let body: unknown
  try {
    body = schema[name]!.decode(frame.subarray(1))
  } catch (err) {
    throw PROTOCOL_ERROR(`malformed ${name}: ${(err as Error).message}`)
  }
  const msg = { type: name, body } as Message
  check(msg)
  return msg
}

function check (msg: Message): void {
  const bad = (why: string) => PROTOCOL_ERROR(`bad ${msg.type}: ${why}`)
  const isHash = (b: Buffer) => b.length === HASH_BYTES
  switch (msg.type) {
    case 'Hello':
      if (msg.body.adverts.length > MAX_ADVERTS_PER_FRAME) throw bad('too many adverts')
      msg.body.adverts.forEach(checkAdvert)
      if ((msg.body.lanePort ?? 0) > 65535) throw bad('lane port')
      break
    case 'Adverts':
    case 'Offers':
      if (msg.body.adverts.length > MAX_ADVERTS_PER_FRAME) throw bad('too many adverts')
      msg.body.adverts.forEach(checkAdvert)
      break
    case 'ManifestRequest':
      if (!isHash(msg.body.root)) throw bad('root')
      break
    case 'ManifestResponse': {
      const { total, offset, data } = msg.body
      if (!Number.isSafeInteger(total) || !Number.isSafeInteger(offset) || offset + data.length > total) throw bad('range')
      if (data.length > MAX_MANIFEST_CHUNK) throw bad('chunk too large')
      break
    }
    case 'Have':
      if (!isHash(msg.body.root)) throw bad('root')
      if (msg.body.start % 8 !== 0 || msg.body.bitfield.length * 8 > MAX_HAVE_BITS) throw bad('range')
      break
    case 'BlockRequest': {
      const n = msg.body.hashes.length / HASH_BYTES
      if (!Number.isInteger(n) || n < 1 || n > MAX_HASHES_PER_REQUEST) throw bad('hash count')
      if (msg.body.root && !isHash(msg.body.root)) throw bad('root')
      break
    }
    case 'BlockResponse': {
      if (!Object.values(Codec).includes(msg.body.codec)) throw bad('codec')
      if (msg.body.sizes.length > MAX_HASHES_PER_REQUEST) throw bad('too many blocks')
      let raw = 0
      for (const s of msg.body.sizes) raw += s
      if (raw > MAX_BLOCK_BYTES) throw bad('too many bytes')
      if (msg.body.codec === Codec.RAW && raw !== msg.body.data.length) throw bad('sizes do not add up')
      break
    }
    case 'Error':
    case 'Cancel':
      break
    case 'Withdraw':
      if (msg.body.roots.length > MAX_ADVERTS_PER_FRAME || !msg.body.roots.every(isHash)) throw bad('roots')
      break
    case 'Stage':
      if (!/^[0-9a-f]{8,32}$/.test(msg.body.id)) throw bad('id')
      for (const r of [msg.body.root, msg.body.base, msg.body.image]) if (r && !isHash(r)) throw bad('root')
      if (!msg.body.cancel && (!msg.body.root || !Number.isSafeInteger(msg.body.size ?? 0))) throw bad('root or size')
      if ((msg.body.name ?? '').length > 255) throw bad('name')
      break
    case 'StageStatus':
      if (!/^[0-9a-f]{8,32}$/.test(msg.body.id) || msg.body.state.length > 16) throw bad('id or state')
      if ((msg.body.message ?? '').length > 1024 || (msg.body.stats ?? '').length > 64 << 10) throw bad('too long')
      if (msg.body.root && !isHash(msg.body.root)) throw bad('root')
      break
    case 'SeedDefaults':
      if (msg.body.author.length !== 32 || msg.body.signature.length !== 64) throw bad('key lengths')
      if (msg.body.policies.length > MAX_SEED_DEFAULTS_BYTES || !Number.isSafeInteger(msg.body.version)) throw bad('policies')
      break
  }
}

function checkAdvert (a: Advert): void {
  if (a.root.length !== HASH_BYTES || a.builder.length !== 32 || a.signature.length !== 64) throw PROTOCOL_ERROR('bad advert: key lengths')
  if (!Number.isSafeInteger(a.size) || a.name.length > 255) throw PROTOCOL_ERROR('bad advert: size or name')
  if ((a.labels?.length ?? 0) > MAX_LABELS || a.labels?.some(l => l.length > 255)) throw PROTOCOL_ERROR('bad advert: labels')
  if (a.extSignature && a.extSignature.length !== 64) throw PROTOCOL_ERROR('bad advert: key lengths')
  if (a.revSignature && (a.revSignature.length !== 64 || !a.extSignature)) throw PROTOCOL_ERROR('bad advert: revision signature')
  if (a.verSignature && (a.verSignature.length !== 64 || !a.extSignature || !Number.isSafeInteger(a.version))) throw PROTOCOL_ERROR('bad advert: version signature')
}

// Bytes the builder signs for an advert: everything but the signature, in a fixed layout.
export function advertSigningBytes (a: Omit<Advert, 'signature'>): Buffer {
  const name = Buffer.from(a.name, 'utf8')
  const spec = a.specKey ?? Buffer.alloc(0)
  const out = Buffer.alloc(16 + 32 + 8 + 4 + 2 + name.length + 2 + spec.length + 32)
  let o = out.write('osfarm-advert-v1', 0, 'latin1')
  o += a.root.copy(out, o)
  out.writeBigUInt64BE(BigInt(a.size), o); o += 8
  out.writeUInt32BE(a.blockSize, o); o += 4
  out.writeUInt16BE(name.length, o); o += 2
  o += name.copy(out, o)
  out.writeUInt16BE(spec.length, o); o += 2
  o += spec.copy(out, o)
  a.builder.copy(out, o)
  return out
}

// Bytes the builder signs for an advert's appended fields: the v1 bytes, then created and labels.
export function advertExtSigningBytes (a: Omit<Advert, 'signature' | 'extSignature'>): Buffer {
  const parts: Buffer[] = [advertSigningBytes(a), Buffer.from('osfarm-advert-ext-v1', 'latin1')]
  const head = Buffer.alloc(10)
  head.writeBigUInt64BE(BigInt(a.created ?? 0), 0)
  head.writeUInt16BE(a.labels?.length ?? 0, 8)
  parts.push(head)
  for (const l of a.labels ?? []) {
    const b = Buffer.from(l, 'utf8')
    const len = Buffer.alloc(2)
    len.writeUInt16BE(b.length, 0)
    parts.push(len, b)
  }
  return Buffer.concat(parts)
}

// Bytes the builder signs for a relabelled advert: the ext bytes, then the revision.
export function advertRevSigningBytes (a: Omit<Advert, 'signature' | 'extSignature' | 'revSignature'>): Buffer {
  const rev = Buffer.alloc(4)
  rev.writeUInt32BE(a.revision ?? 0, 0)
  return Buffer.concat([advertExtSigningBytes(a), Buffer.from('osfarm-advert-rev-v1', 'latin1'), rev])
}

// Bytes the builder signs for a versioned advert: the ext bytes, then the version.
export function advertVerSigningBytes (a: Omit<Advert, 'signature' | 'extSignature' | 'revSignature' | 'verSignature'>): Buffer {
  const v = Buffer.alloc(4)
  v.writeUInt32BE(a.version ?? 0, 0)
  return Buffer.concat([advertExtSigningBytes(a), Buffer.from('osfarm-advert-ver-v1', 'latin1'), v])
}

// Whether `a` replaces `b`: both the same builder's adverts for one root, `a` relabelled later.
export function supersedes (a: Advert, b: Advert): boolean {
  return (a.revision ?? 0) > (b.revision ?? 0) && a.root.equals(b.root) && a.builder.equals(b.builder)
}

// Bytes an allowed host signs for the fleet's default seed policies.
export function seedDefaultsSigningBytes (d: Omit<SeedDefaults, 'signature'>): Buffer {
  const head = Buffer.alloc(8)
  head.writeBigUInt64BE(BigInt(d.version), 0)
  return Buffer.concat([Buffer.from('osfarm-seed-defaults-v1', 'latin1'), head, d.author, Buffer.from(d.policies, 'utf8')])
}

// Splits a byte stream into frames. Refuses a length over the cap before buffering its body.
export class FrameDecoder {
  #chunks: Buffer[] = []
  #buffered = 0
  readonly #max: number

  constructor (maxFrame = MAX_FRAME_BYTES) {
    this.#max = maxFrame
  }

  // Returns the complete frames (type byte + body) in `chunk` and what came before it.
  push (chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk)
    this.#buffered += chunk.length
    const frames: Buffer[] = []
    while (this.#buffered >= 4) {
      const head = this.#peek(4)
      const len = head.readUInt32BE(0)
      if (len > this.#max) throw FRAME_TOO_LARGE(`frame of ${len} bytes (cap ${this.#max})`)
      if (len === 0) throw PROTOCOL_ERROR('empty frame')
      if (this.#buffered < 4 + len) break
      frames.push(this.#take(4 + len).subarray(4))
    }
    return frames
  }

  get buffered (): number { return this.#buffered }

  #peek (n: number): Buffer {
    if (this.#chunks[0]!.length >= n) return this.#chunks[0]!
    this.#chunks = [Buffer.concat(this.#chunks)]
    return this.#chunks[0]!
  }

  #take (n: number): Buffer {
    const first = this.#chunks[0]!
    let out: Buffer
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.#chunks.shift()
      else this.#chunks[0] = first.subarray(n)
    } else {
      const all = Buffer.concat(this.#chunks)
      out = all.subarray(0, n)
      this.#chunks = all.length > n ? [all.subarray(n)] : []
    }
    this.#buffered -= n
    return out
  }
}
