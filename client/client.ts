// The typed client: the only code that touches the daemon's socket. A refused connection becomes
// DAEMON_UNREACHABLE with a hint; a JSON-RPC error becomes the OsfarmError the daemon raised.

import net from 'node:net'
import { JSONRPCClient, JSONRPCErrorException } from 'json-rpc-2.0'
import { DAEMON_UNREACHABLE, OsfarmError, isErrorCode } from '../protocol/errors.js'
import type { MethodName, Notifications, Params, Result } from '../protocol/rpc.js'

export const DEFAULT_SOCKET = '/run/osfarm/osfarmd.sock'

export type NotificationHandler = <N extends keyof Notifications>(method: N, params: Notifications[N]) => void

export class OsfarmClient {
  readonly #socket: net.Socket
  readonly #rpc: JSONRPCClient
  #onNotification: NotificationHandler = () => {}
  #closed = false

  private constructor (socket: net.Socket) {
    this.#socket = socket
    this.#rpc = new JSONRPCClient(payload => { socket.write(JSON.stringify(payload) + '\n') })
    let buffered = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => {
      buffered += chunk
      for (let nl = buffered.indexOf('\n'); nl !== -1; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 1)
        if (line.trim()) this.#receive(line)
      }
    })
    socket.on('close', () => {
      this.#closed = true
      this.#rpc.rejectAllPendingRequests('connection to osfarmd closed')
    })
    socket.on('error', () => {})
  }

  static async connect (path: string = process.env.OSFARM_SOCKET ?? DEFAULT_SOCKET): Promise<OsfarmClient> {
    const socket = net.connect(path)
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', (err: NodeJS.ErrnoException) => {
        reject(DAEMON_UNREACHABLE(`cannot connect to ${path} (${err.code}): is osfarmd running? Try: systemctl status osfarmd`))
      })
    })
    return new OsfarmClient(socket)
  }

  onNotification (handler: NotificationHandler): void {
    this.#onNotification = handler
  }

  async call<M extends MethodName> (method: M, params: Params<M>): Promise<Result<M>> {
    if (this.#closed) throw DAEMON_UNREACHABLE('connection to osfarmd closed')
    try {
      return await this.#rpc.request(method, params as Record<string, unknown>, undefined)
    } catch (err) {
      throw toOsfarmError(err)
    }
  }

  close (): void {
    this.#closed = true
    this.#socket.end()
  }

  #receive (line: string): void {
    let msg: { method?: string, params?: unknown, id?: unknown }
    try {
      msg = JSON.parse(line)
    } catch {
      return
    }
    if (typeof msg.method === 'string' && msg.id === undefined) {
      this.#onNotification(msg.method as keyof Notifications, msg.params as never)
      return
    }
    this.#rpc.receive(msg as never)
  }
}

function toOsfarmError (err: unknown): OsfarmError {
  if (err instanceof JSONRPCErrorException) {
    const data = err.data as { code?: string } | undefined
    const code = isErrorCode(data?.code) ? data!.code : 'INTERNAL'
    const { code: _, ...details } = data ?? {}
    return new OsfarmError(code, err.message, details)
  }
  if (err instanceof Error && /connection to osfarmd closed/.test(err.message)) return DAEMON_UNREACHABLE(err.message)
  return OsfarmError.from(err)
}
