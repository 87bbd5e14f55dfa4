// GET /images/REF/download?format=raw|qcow2: an image streamed to the browser. Raw comes straight
// off the committed (read-only) volume, with ranges so a broken download can resume; qcow2 is
// converted by the image service into a private scratch file, unlinked once open.

import fs from 'node:fs'
import fsp from 'node:fs/promises'
import type http from 'node:http'
import { BAD_PARAMS, IMAGE_NOT_FOUND, JOB_CANCELLED } from '../../protocol/errors.js'
import type { ImageInfo } from '../../protocol/rpc.js'
import type { Services } from '../services.js'
import { SECURITY_HEADERS } from './static-files.js'

const STREAM_CHUNK = 1 << 20

export type DownloadFormat = 'raw' | 'qcow2'

export class Downloads {
  readonly #d: Pick<Services, 'images' | 'store'>

  constructor (daemon: Pick<Services, 'images' | 'store'>) {
    this.#d = daemon
  }

  async serve (req: http.IncomingMessage, res: http.ServerResponse, ref: string, format: string | null): Promise<void> {
    if (format !== 'raw' && format !== 'qcow2') throw BAD_PARAMS(`"format" must be one of raw, qcow2, got ${JSON.stringify(format)}`)
    const image = await this.#d.images.get(ref)
    if (format === 'raw') return this.#raw(req, res, image)
    return this.#qcow2(req, res, image)
  }

  async #raw (req: http.IncomingMessage, res: http.ServerResponse, image: ImageInfo): Promise<void> {
    const vol = await this.#d.store.stat(image.volume)
    if (!vol) throw IMAGE_NOT_FOUND(`the volume of image ${image.name} is missing from the store`)
    // The root names the content, so it is a strong validator.
    const etag = `"${image.root}"`
    let start = 0
    let end = image.size - 1
    let status = 200
    const range = req.headers.range
    if (range !== undefined && (req.headers['if-range'] === undefined || req.headers['if-range'] === etag)) {
      const r = parseRange(range, image.size)
      if (!r) {
        res.writeHead(416, { ...SECURITY_HEADERS, 'Content-Range': `bytes */${image.size}` })
        return void res.end()
      }
      ;[start, end] = r
      status = 206
    }
    const fh = await fsp.open(vol.path, 'r')
    res.writeHead(status, {
      ...headers(image, 'raw', end - start + 1),
      ETag: etag,
      'Accept-Ranges': 'bytes',
      ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end}/${image.size}` } : {})
    })
    if (req.method === 'HEAD') { await fh.close(); return void res.end() }
    await pipe(fs.createReadStream('', { fd: fh, start, end, highWaterMark: STREAM_CHUNK }), res)
  }

  async #qcow2 (req: http.IncomingMessage, res: http.ServerResponse, image: ImageInfo): Promise<void> {
    const vol = await this.#d.store.stat(image.volume)
    if (!vol) throw IMAGE_NOT_FOUND(`the volume of image ${image.name} is missing from the store`)
    const gone = new AbortController()
    res.once('close', () => gone.abort())
    const fh = await this.#d.images.openAs(image, vol.path, 'qcow2', gone.signal).catch(err => {
      throw gone.signal.aborted ? JOB_CANCELLED('the download was abandoned') : err
    })
    const { size } = await fh.stat()
    res.writeHead(200, headers(image, 'qcow2', size))
    if (req.method === 'HEAD' || gone.signal.aborted) { await fh.close(); return void res.end() }
    await pipe(fs.createReadStream('', { fd: fh, highWaterMark: STREAM_CHUNK }), res)
  }
}

function headers (image: ImageInfo, format: DownloadFormat, length: number): Record<string, string | number> {
  const file = `${image.name.replace(/[^A-Za-z0-9._+@-]/g, '_')}.${format === 'raw' ? 'img' : 'qcow2'}`
  return {
    ...SECURITY_HEADERS,
    'Content-Type': 'application/octet-stream',
    'Content-Length': length,
    'Content-Disposition': `attachment; filename="${file}"`,
    'Cache-Control': 'no-store'
  }
}

function pipe (from: fs.ReadStream, to: http.ServerResponse): Promise<void> {
  return new Promise(resolve => {
    const done = () => { from.destroy(); resolve() }
    from.on('error', () => { to.destroy(); done() })
    to.on('close', done)
    from.on('end', () => resolve())
    from.pipe(to)
  })
}

// One range "bytes=a-b", "bytes=a-" or "bytes=-n"; several ranges are not served.
function parseRange (header: string, size: number): [number, number] | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (!m || (m[1] === '' && m[2] === '')) return undefined
  let start: number
  let end: number
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]))
    end = size - 1
  } else {
    start = Number(m[1])
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  }
  return start <= end && start < size ? [start, end] : undefined
}
