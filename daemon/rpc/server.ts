// The JSON-RPC 2.0 server on the Unix socket: newline-delimited JSON frames, each at most
// MAX_FRAME_BYTES. Bad frames get JSON-RPC errors (with a stable code in error.data.code) and the
// connection stays usable; nothing a client sends can take the daemon down.

import net from 'node:net'
import fs from 'node:fs/promises'
import { MAX_FRAME_BYTES } from '../../protocol/rpc.js'
import { Dispatcher, frameTooLarge } from './dispatcher.js'
import type { CallContext, MethodTable } from './methods.js'
import type { Logger } from '../log.js'

export interface RpcServerOptions {
  socket: string
  mode: number
  group: number | null
  // Refuse methods marked `write` (this socket is open to a group; root has the admin socket).
  readOnly: boolean
  table: MethodTable
  log: Logger
}

export class RpcServer {
  readonly #server: net.Server
  readonly #rpc: Dispatcher
  readonly #connections = new Set<net.Socket>()
  readonly #opts: RpcServerOptions

  constructor (opts: RpcServerOptions) {
    this.#opts = opts
    this.#rpc = new Dispatcher({ table: opts.table, log: opts.log, readOnly: opts.readOnly, readOnlyHint: 'run osfarmctl as root' })
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
    this.#rpc.receiveText(line, ctx).then(response => { if (response) send(response) })
  }
}
