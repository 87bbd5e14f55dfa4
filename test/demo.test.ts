// The README's main job (`scripts/demo`, here its compiled script): two daemons on this host,
// real builds with mmdebstrap, and a fetch that moves only the blocks the host lacks.

import t from 'tap'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'

const DEMO = path.join(path.dirname(fileURLToPath(import.meta.url)), '../scripts/demo.js')

t.test('the main job: A builds, B fetches by content', async t => {
  const r = await execa(process.execPath, [DEMO], { reject: false, timeout: 15 * 60_000, all: true })
  t.equal(r.exitCode, 0, 'the demo ends well')
  const out = r.all ?? ''
  t.match(out, /bookworm-ssh: [\d.]+ s; layers \w+ \(cached\)/, 'the second build takes its base from the cache')
  const fetches = [...out.matchAll(/reused in place (\d+), copied locally (\d+), received from peers (\d+) of (\d+) non-zero blocks/g)].map(m => m.slice(1).map(Number))
  t.equal(fetches.length, 2, 'two fetches reported')
  const [minbase, ssh] = fetches as [number[], number[]]
  t.same(minbase.slice(0, 2), [0, 0], 'B held nothing of minbase')
  t.ok(minbase[2]! > 0 && minbase[2]! <= minbase[3]!, `so every distinct block came from A: ${minbase[2]} of ${minbase[3]} (a block repeated in the image crosses once)`)
  t.ok(ssh[0]! > 0 && ssh[2]! < ssh[3]! / 2, `then most of bookworm-ssh was already there: received ${ssh[2]} of ${ssh[3]}`)
  t.match(out, /on the wire [\d.]+ MB \(blocks [\d.]+ MB before compression\) \+ manifest [\d.]+ MB/)
  t.comment(out.split('\n').filter(l => /^== |reused|on the wire|: [\d.]+ s/.test(l)).join('\n'))
})
