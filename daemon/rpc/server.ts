// The JSON-RPC 2.0 server on the Unix socket: newline-delimited JSON frames, each at most
// MAX_FRAME_BYTES. Bad frames get JSON-RPC errors (with a stable code in error.data.code) and the
// connection stays usable; nothing a client sends can take the daemon down. What a client can
// hold is bounded: connections per socket (more are answered DAEMON_BUSY), a partial frame per
// connection (and all of them together, by a budget that pauses readers), the time a partial
// frame may sit without more bytes or take in all, and answers the client does not read.

import net from 'node:net'
import fs from 'node:fs/promises'
import { MAX_FRAME_BYTES, type Rights } from '../../protocol/rpc.js'
import { ERRORS } from '../../protocol/errors.js'
import { Dispatcher, daemonBusy, frameTooLarge } from './dispatcher.js'
import { ByteBudget } from './frame-budget.js'
import type { CallContext, MethodTable } from './methods.js'
import type { StreamRegistry } from './streams.js'
import type { Logger } from '../log.js'

export const DEFAULT_MAX_CONNECTIONS = 128
export const DEFAULT_IDLE_MS = 30_000
// A frame must be whole this many idle periods after its first byte, however it trickles in.
const FRAME_DEADLINE_IDLES = 4
// An oversized frame is read and dropped up to this much; a client still sending is cut off.
const MAX_DISCARD_BYTES = 8 * MAX_FRAME_BYTES
// Answers queued to a client that does not read them, before it is cut off.
const MAX_UNREAD_BYTES = 4 * MAX_FRAME_BYTES
// Calls running for one connection; reading its further frames waits below this.
const MAX_CALLS_IN_FLIGHT = 256

export interface RpcServerOptions {
  socket: string
  mode: number
  group: number | null
  // What every connection to this socket may do: the admin socket (0600) is root's; the main
  // socket is open to a group, so its callers never get host paths opened for them.
  rights: Rights
  table: MethodTable
  log: Logger
  // Connections served at once (default DEFAULT_MAX_CONNECTIONS); how long a connection may hold
  // a partial frame without sending more (default DEFAULT_IDLE_MS). A connection with no partial
  // frame, such as one waiting on job.watch, is never idle.
  maxConnections?: number
  idleMs?: number
  // Byte streams: a connection whose first frame is `stream.attach` becomes one.
  streams: StreamRegistry
}

export class RpcServer {
  readonly #server: net.Server
  readonly #rpc: Dispatcher
  readonly #connections = new Set<net.Socket>()
  readonly #opts: RpcServerOptions
  readonly #budget = new ByteBudget()

  constructor (opts: RpcServerOptions) {
    this.#opts = opts
    this.#rpc = new Dispatcher({ table: opts.table, log: opts.log, readOnlyHint: 'run osfarmctl as root' })
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
    const maxConnections = this.#opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    if (this.#connections.size >= maxConnections) {
      this.#opts.log.warn('rpc connection refused: too many connections', { socket: this.#opts.socket, max: maxConnections })
      socket.on('error', () => {})
      socket.end(JSON.stringify(daemonBusy(maxConnections)) + '\n')
      setTimeout(() => socket.destroy(), 1000).unref()
      return
    }
    this.#connections.add(socket)
    const abort = new AbortController()
    const cut = (reason: string) => {
      if (socket.destroyed) return
      this.#opts.log.info('rpc connection closed', { reason })
      socket.destroy()
    }
    const send = (msg: unknown) => {
      if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(msg) + '\n')
      if (socket.writableLength > MAX_UNREAD_BYTES) cut(`the client left ${socket.writableLength} bytes of answers unread`)
    }
    const ctx: CallContext = {
      notify: (method, params) => send({ jsonrpc: '2.0', method, params }),
      signal: abort.signal,
      rights: this.#opts.rights
    }
    let pending: Buffer[] = []
    let pendingBytes = 0
    let discarding = false
    // Limits: see the constants above.
    const idleMs = this.#opts.idleMs ?? DEFAULT_IDLE_MS
    let lastData = Date.now()
    let frameStart = 0
    let discarded = 0
    let held = 0
    let overBudget = false
    let cancelWait = () => {}
    const state = { calls: 0, paused: false, pause: () => { socket.pause() }, resume: () => { if (!overBudget) socket.resume() } }
    // Counts this connection's partial frame in the socket's budget; over budget, reading waits.
    const sync = () => {
      if (pendingBytes > held) {
        if (!this.#budget.take(pendingBytes - held) && !overBudget) {
          overBudget = true
          socket.pause()
          cancelWait = this.#budget.whenFree(() => { overBudget = false; lastData = Date.now(); if (!state.paused) socket.resume() })
        }
      } else if (pendingBytes < held) {
        this.#budget.release(held - pendingBytes)
      }
      held = pendingBytes
    }
    const watch = setInterval(() => {
      if (pendingBytes === 0 && !discarding) return
      const now = Date.now()
      if (!overBudget && now - lastData > idleMs) cut(`idle ${now - lastData} ms with a partial frame`)
      else if (now - frameStart > idleMs * FRAME_DEADLINE_IDLES) cut(`a frame not complete ${now - frameStart} ms after it began`)
    }, Math.max(50, Math.floor(idleMs / 4)))
    watch.unref()
    let first = true
    const onData = (data: Buffer) => {
      lastData = Date.now()
      if (discarding && (discarded += data.length) > MAX_DISCARD_BYTES) return cut(`still sending an oversized frame after ${discarded} bytes`)
      let start = 0
      for (let nl = data.indexOf(10); nl !== -1; nl = data.indexOf(10, start)) {
        const part = data.subarray(start, nl)
        start = nl + 1
        if (discarding) { discarding = false; continue }
        if (pendingBytes + part.length > MAX_FRAME_BYTES) { pending = []; pendingBytes = 0; send(frameTooLarge()); continue }
        const line = pending.length ? Buffer.concat([...pending, part]) : part
        pending = []
        pendingBytes = 0
        if (first) {
          first = false
          const attach = streamAttach(line)
          if (attach) {
            socket.off('data', onData)
            socket.pause()
            const ok = this.#opts.streams.attach(attach.token, socket, Buffer.from(data.subarray(start)))
            send(ok ? { jsonrpc: '2.0', id: attach.id, result: { attached: true } } : { jsonrpc: '2.0', id: attach.id, error: { code: ERRORS.NOT_FOUND.rpc, message: 'no such stream (expired or already attached)', data: { code: 'NOT_FOUND' } } })
            if (!ok) socket.end()
            return
          }
        }
        this.#handleLine(line.toString('utf8'), ctx, send, state)
      }
      const rest = data.subarray(start)
      if (discarding || rest.length === 0) return sync()
      if (pendingBytes + rest.length > MAX_FRAME_BYTES) {
        pending = []
        pendingBytes = 0
        discarding = true
        discarded = 0
        send(frameTooLarge())
        return sync()
      }
      if (pendingBytes === 0) frameStart = Date.now()
      pending.push(Buffer.from(rest))
      pendingBytes += rest.length
      sync()
    }
    socket.on('data', onData)
    socket.on('error', () => {})
    socket.on('close', () => {
      clearInterval(watch)
      cancelWait()
      pendingBytes = 0
      sync()
      abort.abort()
      this.#connections.delete(socket)
    })
  }

  #handleLine (line: string, ctx: CallContext, send: (msg: unknown) => void, state: { calls: number, paused: boolean, pause: () => void, resume: () => void }): void {
    if (line.trim() === '') return
    if (++state.calls >= MAX_CALLS_IN_FLIGHT && !state.paused) { state.paused = true; state.pause() }
    this.#rpc.receiveText(line, ctx).then(response => { if (response) send(response) }).finally(() => {
      if (--state.calls < MAX_CALLS_IN_FLIGHT && state.paused) { state.paused = false; state.resume() }
    })
  }
}

// A connection's first frame `{"method":"stream.attach","params":{"token":…}}` (see protocol/stream.ts).
function streamAttach (line: Buffer): { id: unknown, token: string } | undefined {
  if (line.length > 512 || !line.includes('stream.attach')) return undefined
  try {
    const msg = JSON.parse(line.toString('utf8'))
    if (msg?.method !== 'stream.attach' || typeof msg.params?.token !== 'string') return undefined
    return { id: msg.id ?? null, token: msg.params.token }
  } catch {
    return undefined
  }
}
