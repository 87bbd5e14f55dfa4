// Counters and gauges for `osfarmctl stats` and the opt-in Prometheus endpoint. Counters are
// fed from finished jobs (their results carry the figures: layers cached, bytes reused and
// received per peer); gauges are read from the services when asked, so nothing is double-kept.

import http from 'node:http'
import type { JobInfo, MetricFamily, MetricSample } from '../protocol/rpc.js'
import type { Logger } from './log.js'

type Labels = Record<string, string>

// Every counter osfarmd keeps, with its help text.
const COUNTERS = {
  osfarm_jobs_total: 'Jobs finished, by kind and end state',
  osfarm_build_layers_total: 'Image layers asked for by builds, by whether the cache had them',
  osfarm_fetch_blocks_total: 'Blocks of fetched images, by where they came from (in_place, local_copy, peer, zero)',
  osfarm_fetch_bytes_total: 'Bytes received by fetches, raw (after decompression) and on the wire',
  osfarm_fetch_peer_bytes_total: 'Raw bytes received by fetches, by peer',
  osfarm_imported_bytes_total: 'Bytes of images imported'
} as const

export type CounterName = keyof typeof COUNTERS
export type GaugeSource = () => Promise<Array<{ name: string, help: string, samples: MetricSample[] }>>

export class Metrics {
  readonly #counters = new Map<CounterName, Map<string, MetricSample>>()
  readonly #gauges: GaugeSource[] = []

  inc (name: CounterName, labels: Labels = {}, by = 1): void {
    if (!(by > 0)) return
    let family = this.#counters.get(name)
    if (!family) this.#counters.set(name, family = new Map())
    const key = JSON.stringify(labels)
    const sample = family.get(key)
    if (sample) sample.value += by
    else family.set(key, { labels, value: by })
  }

  addGauges (source: GaugeSource): void {
    this.#gauges.push(source)
  }

  // Turns a finished job's result into counters.
  onJobEnd (job: JobInfo): void {
    this.inc('osfarm_jobs_total', { kind: job.kind, state: job.state })
    if (job.state !== 'done' || typeof job.result !== 'object' || job.result === null) return
    const r = job.result as Record<string, any>
    if (job.kind === 'build' && Array.isArray(r.layers)) {
      for (const layer of r.layers) this.inc('osfarm_build_layers_total', { cached: String(Boolean(layer.cached)) })
    }
    if (job.kind === 'import' && typeof r.size === 'number') this.inc('osfarm_imported_bytes_total', {}, r.size)
    const s = r.stats
    if (job.kind === 'fetch' && s) {
      this.inc('osfarm_fetch_blocks_total', { source: 'in_place' }, s.inPlace)
      this.inc('osfarm_fetch_blocks_total', { source: 'local_copy' }, s.copiedLocal)
      this.inc('osfarm_fetch_blocks_total', { source: 'peer' }, s.received)
      this.inc('osfarm_fetch_blocks_total', { source: 'zero' }, s.zeroBlocks)
      this.inc('osfarm_fetch_bytes_total', { kind: 'raw' }, s.rawBytes)
      this.inc('osfarm_fetch_bytes_total', { kind: 'wire' }, s.wireBytes + s.manifestBytes)
      for (const [peer, p] of Object.entries(s.peers ?? {}) as Array<[string, { rawBytes: number }]>) {
        this.inc('osfarm_fetch_peer_bytes_total', { peer }, p.rawBytes)
      }
    }
  }

  async snapshot (): Promise<MetricFamily[]> {
    const families: MetricFamily[] = []
    for (const [name, help] of Object.entries(COUNTERS) as Array<[CounterName, string]>) {
      families.push({ name, help, type: 'counter', samples: [...(this.#counters.get(name)?.values() ?? [])].map(s => ({ ...s })) })
    }
    for (const source of this.#gauges) {
      for (const g of await source()) families.push({ ...g, type: 'gauge' })
    }
    return families
  }

  async prometheus (): Promise<string> {
    let out = ''
    for (const f of await this.snapshot()) {
      out += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`
      for (const s of f.samples) {
        const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, c => c === '\n' ? '\\n' : `\\${c}`)}"`).join(',')
        out += `${f.name}${labels ? `{${labels}}` : ''} ${s.value}\n`
      }
    }
    return out
  }
}

// Serves GET /metrics in the Prometheus text format on a loopback address.
export async function serveMetrics (metrics: Metrics, listen: string, log: Logger): Promise<http.Server> {
  const i = listen.lastIndexOf(':')
  const host = listen.slice(0, i).replace(/^\[|\]$/g, '')
  const port = Number(listen.slice(i + 1))
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || req.url !== '/metrics') {
      res.writeHead(404).end('not found\n')
      return
    }
    metrics.prometheus().then(text => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text)
    }, err => {
      log.error('metrics failed', { error: (err as Error).message })
      res.writeHead(500).end()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => { server.off('error', reject); resolve() })
  })
  log.info('metrics endpoint listening', { address: `http://${listen}/metrics` })
  return server
}
