// Fleets of real daemons on a local HyperDHT testnet (127.0.0.1 only), and image pairs that
// share most of their blocks, for the transfer tests and the benches.

import fs from 'node:fs/promises'
import path from 'node:path'
import crypto from 'node:crypto'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import { startDaemon, tempDir, type TestDaemon } from './daemon.js'
import { eventually } from './eventually.js'

export interface Fleet {
  testnet: Testnet
  bootstrap: string
  daemons: TestDaemon[]
  keys: string[]
  secret: string
}

type Teardown = (fn: () => unknown) => void

export async function startTestnet (teardown: Teardown): Promise<{ testnet: Testnet, bootstrap: string }> {
  const testnet = await createTestnet(3, { host: '127.0.0.1' })
  teardown(() => testnet.destroy())
  return { testnet, bootstrap: testnet.bootstrap.map(b => `${b.host}:${b.port}`).join(',') }
}

export interface FleetOptions {
  env?: Record<string, string>
  uploadLimit?: number
  // Per host: its directory and extra daemon arguments.
  hosts?: Array<{ dir?: string, args?: string[] }>
  // Wait until every host sees every other.
  connected?: boolean
  // More `fleet init` arguments, per host.
  initArgs?: string[][]
}

// Starts `n` daemons on a fresh testnet and joins them into one fleet where all allow all.
export async function startFleet (n: number, teardown: Teardown, options: FleetOptions = {}): Promise<Fleet> {
  const { testnet, bootstrap } = await startTestnet(teardown)
  const daemons: TestDaemon[] = []
  for (let i = 0; i < n; i++) {
    const host = options.hosts?.[i]
    const d = await startDaemon({ ...(options.env ? { env: options.env } : {}), ...(host?.dir ? { dir: host.dir } : {}), ...(host?.args ? { args: host.args } : {}) })
    teardown(async () => { await d.stop('SIGKILL'); if (!host?.dir) await fs.rm(d.dir, { recursive: true, force: true }) })
    daemons.push(d)
  }
  const { keys, secret } = await joinFleet(daemons, bootstrap, options)
  return { testnet, bootstrap, daemons, keys, secret }
}

// Joins running daemons into one new fleet (the first makes the secret); each allows all.
// `initArgs`: more `fleet init` arguments, per host.
export async function joinFleet (daemons: TestDaemon[], bootstrap: string, options: { uploadLimit?: number, connected?: boolean, initArgs?: string[][] } = {}): Promise<{ keys: string[], secret: string }> {
  const limit = options.uploadLimit ? ['--upload-limit', String(options.uploadLimit)] : []
  const first = await daemons[0]!.ctlJson('fleet', 'init', '--bootstrap', bootstrap, '--dht-host', '127.0.0.1', ...limit, ...options.initArgs?.[0] ?? [])
  const secret = first.secret as string
  const keys: string[] = [first.publicKey]
  for (const [i, d] of daemons.slice(1).entries()) {
    const info = await d.ctlJson('fleet', 'init', '--secret', secret, '--bootstrap', bootstrap, '--dht-host', '127.0.0.1', ...limit, ...options.initArgs?.[i + 1] ?? [])
    keys.push(info.publicKey)
  }
  for (const d of daemons) for (const k of keys) await d.ctlJson('fleet', 'allow', k)
  if (options.connected) for (const d of daemons) await waitPeers(d, daemons.length - 1)
  return { keys, secret }
}

// Adds a daemon to a fleet: it joins, allows every member, and the members (those running)
// allow it.
export async function addToFleet (d: TestDaemon, fleet: Pick<Fleet, 'secret' | 'bootstrap' | 'keys'>, members: TestDaemon[]): Promise<string> {
  const info = await d.ctlJson('fleet', 'init', '--secret', fleet.secret, '--bootstrap', fleet.bootstrap, '--dht-host', '127.0.0.1')
  for (const k of fleet.keys) await d.ctlJson('fleet', 'allow', k)
  for (const m of members) await m.ctlJson('fleet', 'allow', info.publicKey)
  return info.publicKey as string
}

// Waits until `d` sees `count` peers.
export async function waitPeers (d: TestDaemon, count: number, ms = 60_000): Promise<void> {
  await eventually(`${count} peers`, async () => (await d.ctlJson('peer', 'ls')).length >= count, { timeoutMs: ms, intervalMs: 200 })
}

// Polls a job (osfarmctl job show) until `until` holds.
export async function pollJob (d: TestDaemon, id: string, until: (j: any) => boolean, ms = 120_000): Promise<any> {
  return await eventually(`job ${id} in the state waited for`, async () => {
    const j = await d.ctlJson('job', 'show', id)
    return until(j) ? j : undefined
  }, { timeoutMs: ms })
}

// Compressible, varied content: text-like runs, as file systems hold.
function block (rnd: () => number, bs: number): Buffer {
  const b = Buffer.alloc(bs)
  const words = ['alpha ', 'beta ', 'gamma ', 'delta ', 'usr/lib/', '.so.6 ', '0x7f45 ', 'ELF\u0002\u0001 ']
  let o = 0
  while (o < bs) o += b.write(words[Math.floor(rnd() * words.length)]! + String(Math.floor(rnd() * 1e6)), o)
  return b
}

function seeded (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

export interface ImagePair {
  base: string
  derived: string
  derivedData: Buffer
  // Blocks of `derived` that `base` lacks anywhere.
  absentBlocks: number
}

// base: `blocks` blocks (a quarter zero); derived: the same with `changed` of every 100 blocks
// new, some base blocks moved to other offsets, and a grown tail.
export async function makeImagePair (dir: string, blocks: number, changed = 20, seed = 1): Promise<ImagePair> {
  const bs = 4096
  const rnd = seeded(seed)
  const base: Buffer[] = []
  for (let i = 0; i < blocks; i++) base.push(i % 4 === 3 ? Buffer.alloc(bs) : block(rnd, bs))
  const derived = base.slice()
  let absent = 0
  for (let i = 0; i < blocks; i++) {
    const r = i % 100
    if (r < changed) { derived[i] = block(rnd, bs); absent++ } else if (r === changed && i + 5 < blocks) derived[i] = base[i + 5]!
  }
  for (let i = 0; i < 16; i++) { derived.push(block(rnd, bs)); absent++ }
  const basePath = path.join(dir, 'base.img')
  const derivedPath = path.join(dir, 'derived.img')
  await writeSparse(basePath, base)
  const derivedData = Buffer.concat(derived)
  await writeSparse(derivedPath, derived)
  return { base: basePath, derived: derivedPath, derivedData, absentBlocks: absent }
}

async function writeSparse (file: string, blocks: Buffer[]): Promise<void> {
  const fh = await fs.open(file, 'w')
  try {
    for (let i = 0; i < blocks.length; i++) if (blocks[i]!.some(x => x !== 0)) await fh.write(blocks[i]!, 0, blocks[i]!.length, i * blocks[i]!.length)
    await fh.truncate(blocks.reduce((n, b) => n + b.length, 0))
  } finally {
    await fh.close()
  }
}

export async function sha256 (file: string): Promise<string> {
  return crypto.createHash('sha256').update(await fs.readFile(file)).digest('hex')
}

export { tempDir }
