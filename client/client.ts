// The typed client: the only code that touches the daemon's socket. A refused connection becomes
// DAEMON_UNREACHABLE with a hint; a JSON-RPC error becomes the OsfarmError the daemon raised.
// An error the daemon could not tie to a call (id null: a frame it refused, a connection it
// refused) fails every call in flight with that error, and a connection that ends fails them
// with DAEMON_UNREACHABLE, so no call ever waits for an answer that cannot come.

import net from 'node:net'
import { JSONRPCClient, JSONRPCErrorException } from 'json-rpc-2.0'
import { DAEMON_UNREACHABLE, FRAME_TOO_LARGE, OsfarmError, SPEC_INVALID, isErrorCode } from '../protocol/errors.js'
import { MAX_FRAME_BYTES, MAX_SPEC_BYTES, type MethodName, type Notifications, type Params, type Result, type Rights } from '../protocol/rpc.js'

export const DEFAULT_SOCKET = '/run/osfarm/osfarmd.sock'

export type NotificationHandler = <N extends keyof Notifications>(method: N, params: Notifications[N]) => void

export class OsfarmClient {
  readonly #socket: net.Socket
  readonly #rpc: JSONRPCClient
  #onNotification: NotificationHandler = () => {}
  #closed = false
  // Why the connection can answer no more calls, once it cannot.
  #fatal: OsfarmError | undefined

  // The socket this client is connected to (streams attach there too), and what it may do there
  // (set from daemon.version by whoever connects).
  readonly path: string
  rights: Rights = 'user'

  private constructor (socket: net.Socket, path: string) {
    this.path = path
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
      this.#fail(DAEMON_UNREACHABLE('osfarmd closed the connection before answering (did it stop? Try: systemctl status osfarmd)'))
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
    return new OsfarmClient(socket, path)
  }

  onNotification (handler: NotificationHandler): void {
    this.#onNotification = handler
  }

  async call<M extends MethodName> (method: M, params: Params<M>): Promise<Result<M>> {
    if (this.#fatal) throw this.#fatal
    if (this.#closed) throw DAEMON_UNREACHABLE('connection to osfarmd closed')
    checkOutgoing(method, params)
    try {
      return await this.#rpc.request(method, params as Record<string, unknown>, undefined)
    } catch (err) {
      throw this.#fatal ?? toOsfarmError(err)
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
    const error = (msg as { error?: { message?: unknown, code?: unknown, data?: unknown } }).error
    if (msg.id === null && error) {
      this.#fail(toOsfarmError(new JSONRPCErrorException(String(error.message ?? 'error'), Number(error.code ?? 0), error.data)))
      return
    }
    this.#rpc.receive(msg as never)
  }

  #fail (err: OsfarmError): void {
    this.#fatal ??= err
    this.#rpc.rejectAllPendingRequests(err.message)
  }
}

// What the daemon would refuse anyway is refused here, before a byte is sent, with the reason.
function checkOutgoing (method: string, params: unknown): void {
  const spec = (params as { spec?: unknown } | undefined)?.spec
  if (typeof spec === 'string') {
    const bytes = Buffer.byteLength(spec)
    if (bytes > MAX_SPEC_BYTES) throw SPEC_INVALID(`the spec is ${bytes} bytes, over the limit of ${MAX_SPEC_BYTES}`)
  }
  // The request's frame: the params plus the envelope's few dozen bytes.
  const bytes = Buffer.byteLength(JSON.stringify(params ?? null)) + method.length + 64
  if (bytes > MAX_FRAME_BYTES) throw FRAME_TOO_LARGE(`${method}: the request is about ${bytes} bytes, over the frame limit of ${MAX_FRAME_BYTES}`)
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
