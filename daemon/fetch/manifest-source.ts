// A fetch's first step: the manifest from a holder, checked against the root. As a delta where
// a holder can make one: against the caller's base, or else against the newest image this host
// holds that a holder also advertises; else whole, its chunks spread over every whole holder.

import { NO_PEERS, OsfarmError } from '../../protocol/errors.js'
import type { ImageInfo } from '../../protocol/rpc.js'
import { decodeManifest, type Manifest } from '../blocks/manifest.js'
import { applyManifestDelta } from '../blocks/manifest-delta.js'
import type { LocalBlocks } from '../blocks/local-blocks.js'
import type { Catalog } from '../catalog/catalog.js'
import type { FleetSwarm } from '../fleet/fleet-swarm.js'
import type { Logger } from '../log.js'

const MAX_MANIFEST_BYTES = 256 << 20
// A delta is waited for this long at most before the whole manifest is asked for.
const DELTA_WAIT_MS = 10_000
const POLL_MS = 200

export interface ManifestSourceDeps {
  swarm: FleetSwarm
  catalog: Catalog
  local: LocalBlocks
  log: Logger
}

export interface ManifestRequest {
  from?: string
  // A root whose manifest this host holds: ask holders for the wanted manifest as a delta.
  manifestBase?: string
  waitMs: number
  signal: AbortSignal
}

// wireBytes counts what came over the wire.
export async function fetchManifest (d: ManifestSourceDeps, root: Buffer, req: ManifestRequest): Promise<{ manifest: Manifest, wireBytes: number }> {
  const rootHex = root.toString('hex')
  const baseHex = req.manifestBase ?? await commonImage(d, rootHex, req.from)
  const base = baseHex ? d.local.manifest(Buffer.from(baseHex, 'hex')) ?? await d.catalog.manifest(baseHex) : undefined
  if (base) {
    const deadline = Date.now() + Math.min(req.waitMs, DELTA_WAIT_MS)
    while (Date.now() < deadline && !req.signal.aborted) {
      const s = d.swarm.holders(rootHex).find(h => h.adverts.has(rootHex) && (!req.from || h.remoteHex === req.from) && (req.manifestBase !== undefined || h.adverts.has(baseHex!)))
      if (!s) { await sleep(POLL_MS); continue }
      try {
        const got = await s.getManifestDelta(root, base.root, MAX_MANIFEST_BYTES)
        const manifest = got.delta ? applyManifestDelta(base, got.data) : decodeManifest(got.data)
        if (manifest.root.equals(root)) return { manifest, wireBytes: got.data.length }
        d.log.warn('manifest delta from peer did not give the root', { peer: s.remoteHex.slice(0, 16) })
      } catch (err) {
        d.log.warn('manifest delta from peer failed', { peer: s.remoteHex.slice(0, 16), error: (err as Error).message })
      }
      break
    }
  }
  const enc = await wholeManifest(d, root, req)
  return { manifest: decodeManifest(enc, root), wireBytes: enc.length }
}

// The newest image here that a whole holder of `rootHex` (`from`, if given) advertises too.
async function commonImage (d: ManifestSourceDeps, rootHex: string, from?: string): Promise<string | undefined> {
  const holders = d.swarm.holders(rootHex).filter(h => h.adverts.has(rootHex) && (!from || h.remoteHex === from))
  let best: ImageInfo | undefined
  for (const i of await d.catalog.listImages()) {
    if (i.root !== rootHex && holders.some(h => h.adverts.has(i.root)) && (!best || i.createdAt > best.createdAt)) best = i
  }
  return best?.root
}

async function wholeManifest (d: ManifestSourceDeps, root: Buffer, req: ManifestRequest): Promise<Buffer> {
  const swarm = d.swarm
  const deadline = Date.now() + req.waitMs
  const rootHex = root.toString('hex')
  const tried = new Set<string>()
  let lastErr: unknown
  while (Date.now() < deadline) {
    if (req.signal.aborted) throw new OsfarmError('JOB_CANCELLED')
    const holders = swarm.holders(rootHex).filter(s => !tried.has(s.remoteHex) && (!req.from || s.remoteHex === req.from))
    const s = holders[0]
    if (!s) {
      if (tried.size && !swarm.holders(rootHex).length) tried.clear()
      await sleep(POLL_MS)
      continue
    }
    tried.add(s.remoteHex)
    try {
      // Chunks after the first are spread over every whole holder.
      const helpers = swarm.holders(rootHex).filter(h => h.adverts.has(rootHex) && (!req.from || h.remoteHex === req.from))
      const enc = await s.getManifest(root, MAX_MANIFEST_BYTES, helpers)
      decodeManifest(enc, root)
      return enc
    } catch (err) {
      lastErr = err
      d.log.warn('manifest from peer failed', { peer: s.remoteHex.slice(0, 16), error: (err as Error).message })
    }
  }
  throw NO_PEERS(`no peer sent the manifest of ${rootHex.slice(0, 16)}${lastErr ? `: ${(lastErr as Error).message}` : ''}`)
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}
