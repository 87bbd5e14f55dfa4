// The JSON-RPC 2.0 server on the Unix socket: newline-delimited JSON frames, each at most
// MAX_FRAME_BYTES. Bad frames get JSON-RPC errors (with a stable code in error.data.code) and the
// connection stays usable; nothing a client sends can take the daemon down.

import net from 'node:net'
import fs from 'node:fs/promises'
import { JSONRPCServer, JSONRPCErrorException, createJSONRPCErrorResponse, type JSONRPCResponse } from 'json-rpc-2.0'
import { ERRORS, OsfarmError, isErrorCode, type ErrorCode } from '../../protocol/errors.js'
import { MAX_FRAME_BYTES } from '../../protocol/rpc.js'
import { checkParams } from './params.js'
import type { CallContext, MethodTable } from './methods.js'
import type { Logger } from '../log.js'

const STANDARD_CODES: Record<number, ErrorCode> = {
  [-32700]: 'BAD_REQUEST',
  [-32600]: 'BAD_REQUEST',
  [-32601]: 'UNKNOWN_METHOD',
  [-32602]: 'BAD_PARAMS',
  [-32603]: 'INTERNAL'
}

export interface RpcServerOptions {
  socket: string
  mode: number
  group: number | null
  table: MethodTable
  log: Logger
}

export class RpcServer {
  readonly #server: net.Server
  // Handler errors are answered to the caller and logged here, not printed by the library.
  readonly #rpc = new JSONRPCServer<CallContext>({ errorListener: () => {} })
  readonly #connections = new Set<net.Socket>()
  readonly #opts: RpcServerOptions

  constructor (opts: RpcServerOptions) {
    this.#opts = opts
    for (const [name, entry] of Object.entries(opts.table)) {
      this.#rpc.addMethod(name, async (params, ctx) => {
        try {
          const checked = checkParams(entry.params, params)
          return await (entry.handler as (p: unknown, c: CallContext) => unknown)(checked, ctx)
        } catch (err) {
          const e = OsfarmError.from(err)
          if (e.code === 'INTERNAL') opts.log.error('method failed', { method: name, error: e.message })
          throw new JSONRPCErrorException(e.text, e.rpcCode, { code: e.code, ...e.details })
        }
      })
    }
    this.#server = net.createServer(socket => this.#accept(socket))
  }

  async listen (): Promise<void> {
    const { socket, mode, group } = this.#opts
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(socket, () => { this.#server.off('error', reject); resolve() })
    })
    await fs.chmod(socket, mode)
    if (group !== null) await fs.chown(socket, process.getuid?.() ?? 0, group)
  }

  async close (): Promise<void> {
    const closed = new Promise<void>(resolve => this.#server.close(() => resolve()))
    for (const s of this.#connections) s.destroy()
    await closed
    await fs.rm(this.#opts.socket, { force: true })
  }

  #accept (socket: net.Socket): void {
    this.#connections.add(socket)
    const abort = new AbortController()
    const send = (msg: unknown) => { if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(msg) + '\n') }
    const ctx: CallContext = {
      notify: (method, params) => send({ jsonrpc: '2.0', method, params }),
      signal: abort.signal
    }
    let pending: Buffer[] = []
    let pendingBytes = 0
    let discarding = false
    socket.on('data', (data: Buffer) => {
      let start = 0
      for (let nl = data.indexOf(10); nl !== -1; nl = data.indexOf(10, start)) {
        const part = data.subarray(start, nl)
        start = nl + 1
        if (discarding) { discarding = false; continue }
        if (pendingBytes + part.length > MAX_FRAME_BYTES) { pending = []; pendingBytes = 0; send(frameTooLarge()); continue }
        const line = pending.length ? Buffer.concat([...pending, part]) : part
        pending = []
        pendingBytes = 0
        this.#handleLine(line.toString('utf8'), ctx, send)
      }
      const rest = data.subarray(start)
      if (discarding || rest.length === 0) return
      if (pendingBytes + rest.length > MAX_FRAME_BYTES) {
        pending = []
        pendingBytes = 0
        discarding = true
        send(frameTooLarge())
        return
      }
      pending.push(Buffer.from(rest))
      pendingBytes += rest.length
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      abort.abort()
      this.#connections.delete(socket)
    })
  }

  #handleLine (line: string, ctx: CallContext, send: (msg: unknown) => void): void {
    if (line.trim() === '') return
    let request: unknown
    try {
      request = JSON.parse(line)
    } catch {
      send(createJSONRPCErrorResponse(null, -32700, 'parse error: not valid JSON', { code: 'BAD_REQUEST' }))
      return
    }
    Promise.resolve(this.#rpc.receive(request as never, ctx)).then(response => {
      if (response) send(withCodes(response))
    }, err => {
      this.#opts.log.error('rpc dispatch failed', { error: (err as Error).message })
      send(createJSONRPCErrorResponse(null, ERRORS.INTERNAL.rpc, 'internal error', { code: 'INTERNAL' }))
    })
  }
}

function frameTooLarge () {
  return createJSONRPCErrorResponse(null, ERRORS.FRAME_TOO_LARGE.rpc, `frame larger than ${MAX_FRAME_BYTES} bytes`, { code: 'FRAME_TOO_LARGE' })
}

// Errors the library makes itself (invalid request, unknown method) get a code in data too.
function withCodes (response: JSONRPCResponse | JSONRPCResponse[]): JSONRPCResponse | JSONRPCResponse[] {
  if (Array.isArray(response)) return response.map(r => withCodes(r) as JSONRPCResponse)
  const error = (response as { error?: { code: number, data?: { code?: string } } }).error
  if (error && !isErrorCode(error.data?.code)) {
    error.data = { ...(typeof error.data === 'object' ? error.data : {}), code: STANDARD_CODES[error.code] ?? 'INTERNAL' }
  }
  return response
}
