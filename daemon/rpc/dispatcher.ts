// The one JSON-RPC dispatcher over the method table, shared by the Unix socket and the HTTP
// listener: params are checked before a handler runs, `write` methods are refused to read-only
// callers and `admin` ones to callers other than root (the rights travel in each call's
// context), and every error answers with its stable code in error.data.code.

import { JSONRPCServer, JSONRPCErrorException, createJSONRPCErrorResponse, type JSONRPCResponse } from 'json-rpc-2.0'
import { ERRORS, OsfarmError, PERMISSION_DENIED, isErrorCode, type ErrorCode } from '../../protocol/errors.js'
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

export type RpcResponse = JSONRPCResponse | JSONRPCResponse[]

export interface DispatcherOptions {
  table: MethodTable
  log: Logger
  // Ends the message that refuses a `write` method to a read-only caller.
  readOnlyHint?: string
}

export class Dispatcher {
  // Handler errors are answered to the caller and logged here, not printed by the library.
  readonly #rpc = new JSONRPCServer<CallContext>({ errorListener: () => {} })
  readonly #log: Logger

  constructor (opts: DispatcherOptions) {
    this.#log = opts.log
    for (const [name, entry] of Object.entries(opts.table)) {
      this.#rpc.addMethod(name, async (params, ctx) => {
        try {
          if (entry.write && ctx.rights === 'read') throw PERMISSION_DENIED(`${name} changes state and this daemon limits that to root${opts.readOnlyHint ? `: ${opts.readOnlyHint}` : ''}`)
          const checked = checkParams(entry.params, params)
          const needsRoot = ctx.rights === 'admin' ? undefined : (entry.admin as ((p: unknown) => string | undefined) | undefined)?.(checked)
          if (needsRoot) throw PERMISSION_DENIED(`${name}: ${needsRoot}`)
          return await (entry.handler as (p: unknown, c: CallContext) => unknown)(checked, ctx)
        } catch (err) {
          const e = OsfarmError.from(err)
          if (e.code === 'INTERNAL') opts.log.error('method failed', { method: name, error: e.message })
          throw new JSONRPCErrorException(e.text, e.rpcCode, { code: e.code, ...e.details })
        }
      })
    }
  }

  // Answers one JSON text (a request or a batch); null when nothing is owed (notifications).
  async receiveText (text: string, ctx: CallContext): Promise<RpcResponse | null> {
    let request: unknown
    try {
      request = JSON.parse(text)
    } catch {
      return createJSONRPCErrorResponse(null, -32700, 'parse error: not valid JSON', { code: 'BAD_REQUEST' })
    }
    return this.receive(request, ctx)
  }

  async receive (request: unknown, ctx: CallContext): Promise<RpcResponse | null> {
    try {
      const response = await this.#rpc.receive(request as never, ctx)
      return response ? withCodes(response) : null
    } catch (err) {
      this.#log.error('rpc dispatch failed', { error: (err as Error).message })
      return createJSONRPCErrorResponse(null, ERRORS.INTERNAL.rpc, 'internal error', { code: 'INTERNAL' })
    }
  }
}

export function frameTooLarge (): JSONRPCResponse {
  return createJSONRPCErrorResponse(null, ERRORS.FRAME_TOO_LARGE.rpc, `frame larger than ${MAX_FRAME_BYTES} bytes`, { code: 'FRAME_TOO_LARGE' })
}

// The answer (id null) to a connection over the cap, before it is closed.
export function daemonBusy (max: number): JSONRPCResponse {
  return createJSONRPCErrorResponse(null, ERRORS.DAEMON_BUSY.rpc, `osfarmd already serves ${max} connections on this socket; try again`, { code: 'DAEMON_BUSY' })
}

// Errors the library makes itself (invalid request, unknown method) get a code in data too.
function withCodes (response: RpcResponse): RpcResponse {
  if (Array.isArray(response)) return response.map(r => withCodes(r) as JSONRPCResponse)
  const error = (response as { error?: { code: number, data?: { code?: string } } }).error
  if (error && !isErrorCode(error.data?.code)) {
    error.data = { ...(typeof error.data === 'object' ? error.data : {}), code: STANDARD_CODES[error.code] ?? 'INTERNAL' }
  }
  return response
}
