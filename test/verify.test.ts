// The fetch's whole-image check (daemon/fetch/verify.ts): blocks added are read back and hashed,
// received blocks (hashed before they were written) are not read again, and whatever was
// neither is read at the end.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { Verifier } from '../daemon/fetch/verify.js'
import { blockPool } from '../daemon/blocks/block-pool.js'
import { createManifest } from '../daemon/blocks/manifest.js'
import { hash, HASH_BYTES } from '../daemon/blocks/hash.js'

const BS = 4096
const N = 64

t.test('added blocks are read back, received ones are not, the rest at the end', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-verify-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const data = crypto.randomBytes(N * BS)
  const hashes = Buffer.alloc(N * HASH_BYTES)
  for (let i = 0; i < N; i++) hash(data.subarray(i * BS, (i + 1) * BS)).copy(hashes, i * HASH_BYTES)
  const file = path.join(dir, 'img')
  // On disk: blocks 5 (added), 20 (received) and 40 (neither) differ from the manifest.
  const disk = Buffer.from(data)
  for (const i of [5, 20, 40]) disk[i * BS] ^= 0xff
  await fs.writeFile(file, disk)
  const v = new Verifier(file, createManifest(BS, N * BS, hashes), blockPool())
  v.add(Array.from({ length: 16 }, (_, i) => i))
  v.hashed(Array.from({ length: 16 }, (_, i) => 16 + i))
  const bad = await v.finish()
  t.same(bad, [5, 40], 'the added block and the one left for the end are caught; the received one is taken as hashed')
})

t.teardown(() => blockPool().close())
