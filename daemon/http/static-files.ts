// The built web console (vite's output) served from disk: hashed assets cached for good, the
// page itself always revalidated, any other path answered with the page so client routes work.

import fs from 'node:fs'
import path from 'node:path'
import type http from 'node:http'

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json'
}

// Mantine sets inline styles, hence 'unsafe-inline' for styles only; no inline script runs.
export const SECURITY_HEADERS: Record<string, string> = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Content-Security-Policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
}

export class StaticFiles {
  readonly #root: string

  constructor (root: string) {
    this.#root = path.resolve(root)
  }

  get root (): string { return this.#root }

  serve (req: http.IncomingMessage, res: http.ServerResponse, pathname: string): void {
    let rel: string
    try {
      rel = decodeURIComponent(pathname)
    } catch {
      return plain(res, 400, 'bad path')
    }
    if (rel.includes('\0')) return plain(res, 400, 'bad path')
    rel = path.posix.normalize('/' + rel).replace(/^\/+/, '')
    let file = path.join(this.#root, rel)
    if (!file.startsWith(this.#root + path.sep) && file !== this.#root) return plain(res, 404, 'not found')
    let st = statFile(file)
    if (!st) {
      // A missing asset is a 404; any other path is a client-side route of the console.
      if (rel.startsWith('assets/') || path.extname(rel)) return plain(res, 404, 'not found')
      file = path.join(this.#root, 'index.html')
      st = statFile(file)
      if (!st) return plain(res, 503, 'the web console is not built: run `npm run build`\n')
    }
    const immutable = path.relative(this.#root, file).startsWith('assets' + path.sep)
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'Content-Length': st.size,
      'Cache-Control': immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
      'Last-Modified': st.mtime.toUTCString()
    })
    if (req.method === 'HEAD') return void res.end()
    fs.createReadStream(file).on('error', () => res.destroy()).pipe(res)
  }
}

function statFile (file: string): fs.Stats | undefined {
  try {
    const st = fs.statSync(file)
    return st.isFile() ? st : undefined
  } catch {
    return undefined
  }
}

export function plain (res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store', ...headers })
  res.end(text)
}
