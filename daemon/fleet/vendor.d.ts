// The parts of Holepunch's untyped packages that osfarm uses.

declare module 'hyperdht' {
  import type { EventEmitter } from 'node:events'
  export interface KeyPair { publicKey: Buffer, secretKey: Buffer }
  export interface DHTOptions {
    bootstrap?: Array<string | { host: string, port: number }>
    keyPair?: KeyPair
    host?: string
    port?: number
    ephemeral?: boolean
    firewalled?: boolean
  }
  export default class DHT extends EventEmitter {
    constructor (opts?: DHTOptions)
    static keyPair (seed?: Buffer): KeyPair
    defaultKeyPair: KeyPair
    destroyed: boolean
    // dht-rpc: true until this node has found that others reach it on its server socket.
    firewalled: boolean
    // dht-rpc, private: runs the reachability test (onlyFirewall: only that); true when reachable.
    _updateNetworkState? (onlyFirewall?: boolean): Promise<boolean>
    address (): { host: string, port: number, family: number } | null
    io: { serverSocket: import('hyperswarm').UdxSocket | null, clientSocket: import('hyperswarm').UdxSocket | null }
    fullyBootstrapped (): Promise<void>
    destroy (): Promise<void>
  }
}

declare module 'hyperdht/testnet.js' {
  import type DHT from 'hyperdht'
  export interface Testnet {
    nodes: DHT[]
    bootstrap: Array<{ host: string, port: number }>
    destroy (): Promise<void>
  }
  export default function createTestnet (size?: number, opts?: { host?: string, port?: number, teardown?: (fn: () => Promise<void>, opts?: unknown) => void } | ((fn: () => Promise<void>, opts?: unknown) => void)): Promise<Testnet>
}

declare module 'hyperswarm' {
  import type { EventEmitter } from 'node:events'
  import type { Duplex } from 'node:stream'
  import type DHT from 'hyperdht'
  import type { KeyPair } from 'hyperdht'
  export interface PeerInfo {
    publicKey: Buffer
    topics: Buffer[]
    banned: boolean
    ban (status?: boolean): void
    // Private in hyperswarm 4: forgets failed attempts, so a rediscovered peer is queued again.
    _reset? (): void
  }
  export interface NoiseStream extends Duplex {
    remotePublicKey: Buffer
    publicKey: Buffer
    rawStream: { remoteHost?: string, remotePort?: number, socket?: UdxSocket | null } | null
  }
  // udx-native's socket, as far as osfarm sizes its kernel buffers.
  export interface UdxSocket {
    setRecvBufferSize (size: number): number
  }
  export interface PeerDiscovery {
    flushed (): Promise<void>
    refresh (opts?: { client?: boolean, server?: boolean }): Promise<void>
    destroy (): Promise<void>
  }
  export interface SwarmOptions {
    keyPair?: KeyPair
    dht?: DHT
    maxPeers?: number
    firewall?: (remotePublicKey: Buffer, payload?: unknown) => boolean
  }
  export default class Hyperswarm extends EventEmitter {
    constructor (opts?: SwarmOptions)
    keyPair: KeyPair
    dht: DHT
    connections: Set<NoiseStream>
    // Connections past which it dials no more (it may be changed).
    maxPeers: number
    peers: Map<string, PeerInfo>
    join (topic: Buffer, opts?: { server?: boolean, client?: boolean }): PeerDiscovery
    leave (topic: Buffer): Promise<void>
    joinPeer (publicKey: Buffer): void
    leavePeer (publicKey: Buffer): void
    flush (): Promise<boolean>
    listen (): Promise<void>
    destroy (): Promise<void>
    on (event: 'connection', fn: (conn: NoiseStream, info: PeerInfo) => void): this
    on (event: string, fn: (...args: any[]) => void): this
  }
}

// The transport bench's view of udx-native (scripts/bench/raw-stream.ts).
declare module 'udx-native' {
  import type { EventEmitter } from 'node:events'
  interface UdxSocket { bind (port: number, host: string): void }
  interface UdxStream extends EventEmitter {
    connect (socket: UdxSocket, remoteId: number, port: number, host: string): void
    write (data: Buffer): boolean
  }
  export default class UDX {
    createSocket (): UdxSocket
    createStream (id: number): UdxStream
  }
}

declare module '@hyperswarm/secret-stream' {
  import type { Duplex } from 'node:stream'
  import type { KeyPair } from 'hyperdht'
  // A Noise handshake (XX, ed25519 keys) and libsodium's secretstream over `rawStream`.
  export default class SecretStream extends Duplex {
    constructor (isInitiator: boolean, rawStream?: Duplex, opts?: { keyPair?: KeyPair, remotePublicKey?: Buffer })
    // Known once 'open' has fired.
    remotePublicKey: Buffer | null
    rawStream: Duplex
    alloc (n: number): Buffer
  }
}
