// BLAKE3 everywhere: the wasm fallback (hash-wasm), forced with OSFARM_BLAKE3=wasm, gives the
// native binding's digests, one-shot and streamed, and the same manifest root when it indexes.

import t from 'tap'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { tempDir } from '../testing/daemon.js'

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const TIMEOUT_MS = 60_000

// Runs a script in a fresh node with OSFARM_BLAKE3 set; it prints JSON.
async function under (impl: 'native' | 'wasm', file: string, dir: string): Promise<any> {
  const script = `
    import { blake3Implementation, hash, hashParts, Blake3Hasher } from ${JSON.stringify(path.join(DIST, 'daemon/blocks/hash.js'))}
    import { BlockHasher } from ${JSON.stringify(path.join(DIST, 'daemon/blocks/block-hasher.js'))}
    const inputs = [Buffer.alloc(0), Buffer.from('abc'), Buffer.alloc(4096, 7), Buffer.alloc(1 << 20, 1), Buffer.alloc(3000, 9)]
    const oneShot = inputs.map(b => hash(b).toString('hex'))
    const s = new Blake3Hasher()
    for (const b of inputs) s.update(b)
    const streamed = s.digest('hex')
    const t = new Blake3Hasher()
    t.update('x'); t.reset(); t.update('abc')
    const h = new BlockHasher(2)
    const m = await h.indexFile(${JSON.stringify(file)})
    await h.close()
    console.log(JSON.stringify({ impl: blake3Implementation, oneShot, streamed, reset: t.digest('hex'), parts: hashParts(['a', Buffer.from('b')]).toString('hex'), root: m.root.toString('hex') }))
  `
  const runner = path.join(dir, `run-${impl}.mjs`)
  await fs.writeFile(runner, script)
  // Without the test runner's NODE_OPTIONS (its loaders): a plain node, as osfarmd runs.
  const r = await execa(process.execPath, [runner], { env: { OSFARM_BLAKE3: impl, NODE_OPTIONS: '' }, timeout: TIMEOUT_MS })
  return JSON.parse(r.stdout)
}

t.test('the wasm fallback hashes as the native binding does', async t => {
  const dir = await tempDir()
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'img.raw')
  const data = Buffer.alloc(5 << 20)
  for (let i = 0; i < data.length; i += 4096) if ((i >> 12) % 3) data.fill(i >> 12 & 255, i, i + 4096)
  await fs.writeFile(file, data)
  const native = await under('native', file, dir)
  const wasm = await under('wasm', file, dir)
  t.equal(native.impl, 'native', 'the native binding loads here')
  t.equal(wasm.impl, 'wasm', 'OSFARM_BLAKE3=wasm forces the fallback')
  t.equal(native.oneShot[1], '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85', 'BLAKE3("abc")')
  t.same(wasm.oneShot, native.oneShot, 'one-shot digests agree')
  t.equal(wasm.streamed, native.streamed, 'streamed digests agree')
  t.equal(wasm.reset, native.reset, 'reset starts over')
  t.equal(wasm.reset, native.oneShot[1])
  t.equal(wasm.parts, native.parts)
  t.equal(wasm.root, native.root, 'indexing gives the same manifest root (worker threads use the fallback too)')
})
