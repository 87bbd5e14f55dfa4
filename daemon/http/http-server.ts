// osfarmd's opt-in HTTP listener: the web console's files, `POST /rpc` (JSON-RPC 2.0 through the
// same method table and dispatcher as the Unix socket) and image downloads. Access is decided
// per request by access.ts: a bearer token, or a loopback user's rights on the socket.
//
//   POST /rpc            one request or batch; with `Accept: text/event-stream` the answer is a
//                        stream of server-sent events: each notification the call makes (the
//                        progress and log lines of `job.watch`), then the response, then the end
//   GET|POST|DELETE /session
//                        what this browser may do / trade a bearer token for an HttpOnly cookie
//                        (links and downloads cannot send headers) / forget it
//   GET /images/REF/download?format=raw|qcow2
//   GET /...             the console (dist/web)

import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ERRORS, OsfarmError, type ErrorCode } from '../../protocol/errors.js'
import { MAX_FRAME_BYTES } from '../../protocol/rpc.js'
import { Dispatcher, frameTooLarge, type RpcResponse } from '../rpc/dispatcher.js'
import { ByteBudget } from '../rpc/frame-budget.js'
import type { CallContext, MethodTable } from '../rpc/methods.js'
import type { Services } from '../services.js'
import type { Logger } from '../log.js'
import { AccessControl, TOKEN_COOKIE, bearerToken, type Access, type AccessOptions } from './access.js'
import { Downloads } from './download.js'
import { SECURITY_HEADERS, StaticFiles, plain } from './static-files.js'

// dist/daemon/http/ → dist/web/
export const DEFAULT_WEB_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web')
// A comment line keeps idle event streams open through proxies.
const KEEPALIVE_MS = 15_000
const DEFAULT_MAX_CONNECTIONS = 128
const DEFAULT_IDLE_MS = 30_000
// The request line and headers must arrive within one idle period; the whole request (not the
// answer: event streams and downloads run as long as they need) within this many.
const REQUEST_IDLES = 4

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  BAD_PARAMS: 400,
  BAD_REQUEST: 400,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  AMBIGUOUS_ID: 400,
  JOB_CANCELLED: 499
}

export interface HttpServerOptions {
  // "host:port"; port 0 picks one (see url after listen()).
  listen: string
  // Connections at once (more are refused), and how long a request may stall part-way.
  maxConnections?: number
  idleMs?: number
  table: MethodTable
  services: Pick<Services, 'images' | 'store' | 'jobs'>
  access: AccessOptions
  log: Logger
  webRoot?: string
}

export class HttpServer {
  readonly #opts: HttpServerOptions
  readonly #server: http.Server
  readonly #access: AccessControl
  readonly #rpcDispatcher: Dispatcher
  readonly #static: StaticFiles
  readonly #downloads: Downloads
  readonly #log: Logger
  // Request bodies being read, all together.
  readonly #budget = new ByteBudget()
  #url = ''

  constructor (opts: HttpServerOptions) {
    this.#opts = opts
    this.#log = opts.log.child({ http: 'console' })
    this.#access = new AccessControl(opts.access)
    this.#rpcDispatcher = new Dispatcher({ table: opts.table, log: opts.log, readOnlyHint: 'use a token or run the browser as root' })
    this.#static = new StaticFiles(opts.webRoot ?? DEFAULT_WEB_ROOT)
    this.#downloads = new Downloads(opts.services)
    this.#server = http.createServer((req, res) => {
      this.#route(req, res).catch(err => {
        // A request malformed in a way only found while reading it (a bad %-escape, cookie).
        if (err instanceof URIError || (err instanceof OsfarmError && err.code === 'BAD_REQUEST')) {
          if (!res.headersSent) plain(res, 400, `bad request: ${err instanceof OsfarmError ? err.text : 'malformed %-escape'}\n`)
          else res.destroy()
          return
        }
        this.#log.error('http request failed', { path: req.url, error: (err as Error).message })
        if (!res.headersSent) plain(res, 500, 'internal error')
        else res.destroy()
      })
    })
    const idleMs = opts.idleMs ?? DEFAULT_IDLE_MS
    this.#server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    this.#server.headersTimeout = idleMs
    this.#server.requestTimeout = idleMs * REQUEST_IDLES
    // How often the two above are checked (Node's default is 30 s).
    ;(this.#server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = Math.max(50, Math.floor(idleMs / 4))
  }

  get url (): string { return this.#url }

  async listen (): Promise<string> {
    const { host, port } = splitHostPort(this.#opts.listen)
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(port, host, () => { this.#server.off('error', reject); resolve() })
    })
    const addr = this.#server.address() as { address: string, port: number }
    this.#url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}/`
    this.#log.info('web console listening', { url: this.#url, token: this.#access.tokenRequired })
    return this.#url
  }

  async close (): Promise<void> {
    const closed = new Promise<void>(resolve => this.#server.close(() => resolve()))
    this.#server.closeAllConnections()
    await closed
  }

  async #route (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL
    try {
      url = new URL(req.url ?? '/', 'http://console')
    } catch {
      return plain(res, 400, 'bad request: malformed URL\n')
    }
    const p = url.pathname
    if (p === '/rpc') {
      if (req.method !== 'POST') return plain(res, 405, 'POST only', { Allow: 'POST' })
      return this.#rpc(req, res)
    }
    if (p === '/session') return this.#session(req, res)
    const download = /^\/images\/([^/]+)\/download$/.exec(p)
    if (download) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'GET only', { Allow: 'GET, HEAD' })
      const access = await this.#decide(req)
      if (access === 'none') return refuse(res, this.#access.tokenRequired)
      return this.#downloads.serve(req, res, decodeURIComponent(download[1]!), url.searchParams.get('format') ?? 'raw')
        .catch(err => { if (!res.headersSent) errorReply(res, OsfarmError.from(err)); else res.destroy() })
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'method not allowed', { Allow: 'GET, HEAD' })
    this.#static.serve(req, res, p)
  }

  async #decide (req: http.IncomingMessage): Promise<Access> {
    const d = await this.#access.decide(req)
    if (d.access === 'none') this.#log.info('http request refused', { path: req.url, remote: req.socket.remoteAddress, reason: d.reason })
    return d.access
  }

  async #session (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const cookieAttrs = 'Path=/; HttpOnly; SameSite=Strict'
    if (req.method === 'GET') {
      const rights = await this.#decide(req)
      // `access` says whether the console may change things; `rights` whether host paths too.
      return json(res, 200, { access: consoleAccess(rights), rights, tokenRequired: this.#access.tokenRequired })
    }
    if (req.method === 'POST') {
      const site = req.headers['sec-fetch-site']
      if (site === 'cross-site') return refuse(res, false)
      const token = bearerToken(req)
      if (!this.#access.tokenMatches(token)) return refuse(res, true)
      res.setHeader('Set-Cookie', `${TOKEN_COOKIE}=${encodeURIComponent(token!)}; ${cookieAttrs}`)
      return json(res, 200, { access: 'full', rights: 'user', tokenRequired: true })
    }
    if (req.method === 'DELETE') {
      res.setHeader('Set-Cookie', `${TOKEN_COOKIE}=; ${cookieAttrs}; Max-Age=0`)
      res.writeHead(204, SECURITY_HEADERS)
      return void res.end()
    }
    plain(res, 405, 'method not allowed', { Allow: 'GET, POST, DELETE' })
  }

  async #rpc (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // A JSON content type makes a cross-site browser request preflighted, and no preflight is
    // ever answered: forms and simple requests from other sites cannot reach a method.
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
      return rpcReply(res, 415, error(ERRORS.BAD_REQUEST.rpc, 'POST /rpc takes Content-Type: application/json', 'BAD_REQUEST'))
    }
    const access = await this.#decide(req)
    if (access === 'none') {
      const status = this.#access.tokenRequired ? 401 : 403
      return rpcReply(res, status, error(ERRORS.PERMISSION_DENIED.rpc, this.#access.tokenRequired ? 'a valid token is required' : 'this user may not use osfarmd', 'PERMISSION_DENIED'), this.#access.tokenRequired ? { 'WWW-Authenticate': 'Bearer realm="osfarm"' } : {})
    }
    const body = await readBody(req, MAX_FRAME_BYTES, this.#budget)
    if (body === undefined) return rpcReply(res, 413, frameTooLarge())
    const dispatcher = this.#rpcDispatcher
    const abort = new AbortController()
    res.once('close', () => abort.abort())

    if (!/text\/event-stream/.test(req.headers.accept ?? '')) {
      const ctx: CallContext = { notify: () => {}, signal: abort.signal, rights: access }
      const response = await dispatcher.receiveText(body, ctx)
      if (!response) { res.writeHead(204, SECURITY_HEADERS); return void res.end() }
      return rpcReply(res, 200, response)
    }

    res.writeHead(200, { ...SECURITY_HEADERS, 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no' })
    res.flushHeaders()
    const send = (event: string, data: unknown) => { if (!res.writableEnded && !res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`) }
    const keepalive = setInterval(() => { if (!res.destroyed) res.write(': keepalive\n\n') }, KEEPALIVE_MS)
    try {
      const ctx: CallContext = { notify: (method, params) => send('notification', { jsonrpc: '2.0', method, params }), signal: abort.signal, rights: access }
      const response = await dispatcher.receiveText(body, ctx)
      if (response) send('response', response)
    } finally {
      clearInterval(keepalive)
      if (!res.destroyed) res.end()
    }
  }
}

function consoleAccess (rights: Access): 'full' | 'read' | 'none' {
  return rights === 'admin' || rights === 'user' ? 'full' : rights
}

export function splitHostPort (listen: string): { host: string, port: number } {
  const i = listen.lastIndexOf(':')
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(listen.slice(i + 1)) }
}

// The body, or undefined past `limit` (the rest is read and dropped). What is held counts in
// `budget`; over it, reading pauses until other requests finish.
function readBody (req: http.IncomingMessage, limit: number, budget: ByteBudget): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = []
    let size = 0
    let held = 0
    let over = false
    let cancelWait = () => {}
    const done = () => { cancelWait(); budget.release(held); held = 0 }
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > limit && !over) { over = true; parts.length = 0; budget.release(held); held = 0 }
      if (over) return
      parts.push(chunk)
      held += chunk.length
      if (!budget.take(chunk.length)) {
        req.pause()
        cancelWait = budget.whenFree(() => req.resume())
      }
    })
    req.on('end', () => { const text = over ? undefined : Buffer.concat(parts).toString('utf8'); done(); resolve(text) })
    req.on('error', err => { done(); reject(err) })
    req.on('close', done)
  })
}

function error (code: number, message: string, name: ErrorCode): RpcResponse {
  return { jsonrpc: '2.0', id: null, error: { code, message, data: { code: name } } }
}

function rpcReply (res: http.ServerResponse, status: number, body: RpcResponse, headers: Record<string, string> = {}): void {
  json(res, status, body, headers)
}

function json (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store', ...headers })
  res.end(text)
}

function refuse (res: http.ServerResponse, tokenRequired: boolean): void {
  plain(res, tokenRequired ? 401 : 403, tokenRequired ? 'a valid token is required\n' : 'this user may not use osfarmd\n', tokenRequired ? { 'WWW-Authenticate': 'Bearer realm="osfarm"' } : {})
}

// Download errors answer as JSON with the same stable codes as the RPC.
function errorReply (res: http.ServerResponse, e: OsfarmError): void {
  json(res, HTTP_STATUS[e.code] ?? 500, { error: { code: e.code, message: e.text } })
}
