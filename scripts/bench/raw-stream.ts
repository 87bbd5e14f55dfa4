// A transport alone, for the transfer bench: one raw stream moving BYTES from one lab host to
// another, without encryption, framing or any disk. `udx`: the transport under Hyperswarm; `tcp`:
// a kernel TCP connection, what osfarm's TCP lanes ride on. What each reaches on a link is a
// ceiling for anything that rides on it there.
//
//   node dist/scripts/bench/raw-stream.js udx|tcp recv LOCAL_HOST LOCAL_PORT PEER_HOST PEER_PORT BYTES
//   node dist/scripts/bench/raw-stream.js udx|tcp send LOCAL_HOST LOCAL_PORT PEER_HOST PEER_PORT BYTES
//
// The receiver prints "ready", then {"seconds": first byte to last, "cpu": its CPU seconds}.

import net from 'node:net'
import UDX from 'udx-native'

interface Duplex {
  write (data: Buffer): boolean
  on (event: string, fn: (...args: any[]) => void): unknown
  once (event: string, fn: () => void): unknown
}

const [transport, role, localHost, localPort, peerHost, peerPort, bytesArg] = process.argv.slice(2)
const bytes = Number(bytesArg)
if ((transport !== 'udx' && transport !== 'tcp') || (role !== 'send' && role !== 'recv') || !localHost || !peerHost || !Number.isSafeInteger(bytes) || bytes <= 0) {
  console.error('usage: raw-stream.js udx|tcp send|recv LOCAL_HOST LOCAL_PORT PEER_HOST PEER_PORT BYTES')
  process.exit(2)
}
// The receiver ends the run; give up if it never does.
setTimeout(() => process.exit(1), 120_000).unref()

function receive (stream: Duplex): void {
  let got = 0
  let t0 = 0
  const cpu0 = process.cpuUsage()
  stream.on('data', (d: Buffer) => {
    if (!t0) t0 = performance.now()
    got += d.length
    if (got < bytes) return
    const cpu = process.cpuUsage(cpu0)
    console.log(JSON.stringify({ seconds: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6 }))
    process.exit(0)
  })
}

function send (stream: Duplex): void {
  const chunk = Buffer.alloc(64 << 10, 0x5a)
  let sent = 0
  const pump = (): void => {
    while (sent < bytes) {
      const n = Math.min(chunk.length, bytes - sent)
      sent += n
      if (!stream.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { stream.once('drain', pump); return }
    }
  }
  pump()
  stream.on('close', () => process.exit(0))
}

if (transport === 'udx') {
  const udx = new UDX()
  const socket = udx.createSocket()
  socket.bind(Number(localPort), localHost)
  // Stream ids: the receiver is 2, the sender 1; each names the other as its remote.
  const stream = udx.createStream(role === 'recv' ? 2 : 1)
  stream.connect(socket, role === 'recv' ? 1 : 2, Number(peerPort), peerHost)
  stream.on('error', (err: Error) => { console.error(err.message); process.exit(1) })
  if (role === 'recv') { receive(stream); console.log('ready') } else send(stream)
} else if (role === 'recv') {
  net.createServer(receive).listen(Number(localPort), localHost, () => console.log('ready'))
} else {
  const socket = net.connect({ host: peerHost, port: Number(peerPort), noDelay: true })
  socket.on('error', () => process.exit(1))
  socket.on('connect', () => send(socket))
}
