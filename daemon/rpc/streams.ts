// The daemon's end of the API's byte streams (protocol/stream.ts): a call that moves bytes opens
// a stream and returns its token; the caller attaches a second connection with that token within
// ATTACH_TIMEOUT_MS, and the work that opened the stream gets the connection. A token works once.

import type net from 'node:net'
import { randomBytes } from 'node:crypto'
import { BAD_PARAMS, IO_ERROR } from '../../protocol/errors.js'
import { readFrames, type Frame } from '../../protocol/stream.js'

const ATTACH_TIMEOUT_MS = 60_000
// Streams opened and not yet attached; more are refused (each holds a job and maybe a volume).
const MAX_PENDING = 64

export interface StreamConnection {
  socket: net.Socket
  frames (): AsyncGenerator<Frame>
}

interface Pending {
  attach (conn: StreamConnection): void
  timer: NodeJS.Timeout
}

export class StreamRegistry {
  readonly #pending = new Map<string, Pending>()

  // A token, and the connection that attaches with it (rejected if none does in time).
  open (): { token: string, attached: Promise<StreamConnection> } {
    if (this.#pending.size >= MAX_PENDING) throw BAD_PARAMS(`more than ${MAX_PENDING} streams wait to be attached`)
    const token = randomBytes(16).toString('hex')
    let attach!: (conn: StreamConnection) => void
    let fail!: (err: Error) => void
    const attached = new Promise<StreamConnection>((resolve, reject) => { attach = resolve; fail = reject })
    // Whoever opened the stream may give up before anyone attaches.
    attached.catch(() => {})
    const timer = setTimeout(() => {
      this.#pending.delete(token)
      fail(IO_ERROR(`no stream attached within ${ATTACH_TIMEOUT_MS / 1000} s`))
    }, ATTACH_TIMEOUT_MS)
    timer.unref()
    this.#pending.set(token, { attach, timer })
    return { token, attached }
  }

  // Hands a connection to the stream its token names; false if there is no such stream.
  attach (token: string, socket: net.Socket, rest: Buffer): boolean {
    const p = this.#pending.get(token)
    if (!p) return false
    this.#pending.delete(token)
    clearTimeout(p.timer)
    p.attach({ socket, frames: () => readFrames(socket as AsyncIterable<Buffer>, rest) })
    return true
  }
}
