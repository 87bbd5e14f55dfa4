// Block lanes over kernel TCP. UDX, Hyperswarm's transport, runs its congestion control and
// acknowledgements in the process, which costs the receiver several times the CPU of a kernel
// TCP socket per byte (docs/measurements.md). So between hosts that reach each other directly,
// block requests and answers take a second connection: TCP, with the same Noise keys (a
// secret stream, as Hyperswarm's own), admitted only for a peer that is allowed and already has
// a session. Everything else (adverts, Haves, manifests, services) stays on the session, and a
// host that cannot be reached over TCP (behind a NAT, a firewall) is served over UDX as before.
//
// Of two hosts, the one with the lower key dials (one lane per pair); it dials the address its
// session came from, at the port the peer's Hello named. A lane that fails is dialed again a
// bounded number of times while its session lives.

import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import type { KeyPair } from 'hyperdht'
import { PeerSession } from './peer-session.js'
import type { SessionHost } from './session-host.js'

const CONNECT_TIMEOUT_MS = 5_000
// Unauthenticated connections (handshake not done) held at once; more are dropped.
const MAX_HANDSHAKES = 64
const REDIAL_MS = 5_000
const MAX_DIALS = 5

export interface LaneHost extends SessionHost {
  readonly keyPair: KeyPair
  readonly sessions: Map<string, PeerSession>
  isAllowed (key: Buffer): boolean
}

type Log = (msg: string, fields?: Record<string, unknown>) => void

export class TcpLanes {
  readonly port: number
  readonly #host: LaneHost
  readonly #server: net.Server
  readonly #handshakes = new Set<net.Socket>()
  readonly #log: (msg: string, fields?: Record<string, unknown>) => void
  #closed = false

  private constructor (host: LaneHost, server: net.Server, log: Log) {
    this.#host = host
    this.#server = server
    this.#log = log
    this.port = (server.address() as net.AddressInfo).port
    server.on('connection', socket => this.#accept(socket))
  }

  // Listens on `address`, at `port` where it is free (else any port: the Hello names it).
  static async listen (host: LaneHost, address: string, port: number, log: Log = () => {}): Promise<TcpLanes> {
    const server = net.createServer({ noDelay: true })
    const bind = (p: number) => new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host: address, port: p }, () => { server.off('error', reject); resolve() })
    })
    await bind(port).catch(err => {
      if (!port || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
      return bind(0)
    })
    return new TcpLanes(host, server, log)
  }

  // Dials a lane for `session` once its Hello is in, where this side dials and the peer takes lanes.
  offer (session: PeerSession): void {
    const port = session.remoteHello?.lanePort
    const host = hostOf(session.address)
    if (this.#closed || session.parent || !port || !host || !session.supports('tcp-lane')) return
    if (Buffer.compare(this.#host.keyPair.publicKey, session.remoteKey) >= 0) return
    this.#dial(session, host, port, 1)
  }

  close (): void {
    this.#closed = true
    this.#server.close()
    for (const s of this.#handshakes) s.destroy()
  }

  #dial (session: PeerSession, host: string, port: number, attempt: number): void {
    const socket = net.connect({ host, port, noDelay: true })
    const stream = new SecretStream(true, socket, { keyPair: this.#host.keyPair })
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => stream.destroy(new Error('lane connect timed out')))
    let lane: PeerSession | undefined
    stream.on('error', () => {})
    stream.once('open', () => {
      socket.setTimeout(0)
      // Only the peer the session is with may answer at that address.
      if (!stream.remotePublicKey?.equals(session.remoteKey)) { stream.destroy(); return }
      lane = this.#attach(session, stream, `${host}:${port}`)
    })
    stream.once('close', () => {
      if (this.#closed || session.closed || session.lane) return
      if (attempt >= MAX_DIALS) {
        if (!lane) this.#log('no TCP lane to peer: blocks go over the swarm connection', { peer: session.remoteHex.slice(0, 16), address: `${host}:${port}` })
        return
      }
      setTimeout(() => { if (!session.closed && !session.lane) this.#dial(session, host, port, attempt + 1) }, REDIAL_MS * attempt).unref()
    })
  }

  #accept (socket: net.Socket): void {
    if (this.#closed || this.#handshakes.size >= MAX_HANDSHAKES) { socket.destroy(); return }
    this.#handshakes.add(socket)
    const stream = new SecretStream(false, socket, { keyPair: this.#host.keyPair })
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => stream.destroy(new Error('lane handshake timed out')))
    stream.on('error', () => {})
    stream.once('close', () => this.#handshakes.delete(socket))
    stream.once('open', () => {
      this.#handshakes.delete(socket)
      socket.setTimeout(0)
      const key: Buffer | null = stream.remotePublicKey
      const session = key && this.#host.sessions.get(key.toString('hex'))
      if (!key || !this.#host.isAllowed(key) || !session || session.closed) { stream.destroy(); return }
      this.#attach(session, stream, `${socket.remoteAddress}:${socket.remotePort}`)
    })
  }

  #attach (session: PeerSession, stream: SecretStream, address: string): PeerSession {
    const lane = new PeerSession(stream, session.remoteKey, this.#host, address, session)
    session.attachLane(lane)
    return lane
  }
}

// The host part of "host:port" (IPv6 in brackets or bare).
function hostOf (address: string): string | undefined {
  const i = address.lastIndexOf(':')
  if (i <= 0) return undefined
  const host = address.slice(0, i)
  return host.startsWith('[') ? host.slice(1, -1) : host
}
