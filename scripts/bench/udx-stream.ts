// The transport alone, for the transfer bench: one raw UDX stream (the transport under
// Hyperswarm, without its encryption, framing or any disk) moving BYTES from one lab host to
// another. What it reaches on a link is a ceiling for anything that rides on UDX there.
//
//   node dist/scripts/bench/udx-stream.js recv LOCAL_PORT PEER_HOST PEER_PORT BYTES
//   node dist/scripts/bench/udx-stream.js send LOCAL_PORT PEER_HOST PEER_PORT BYTES
//
// The receiver prints "ready", then {"seconds": first byte to last, "cpu": its CPU seconds}.

import UDX from 'udx-native'

const [role, localPort, peerHost, peerPort, bytesArg] = process.argv.slice(2)
const bytes = Number(bytesArg)
if ((role !== 'send' && role !== 'recv') || !Number.isSafeInteger(bytes) || bytes <= 0) {
  console.error('usage: udx-stream.js send|recv LOCAL_PORT PEER_HOST PEER_PORT BYTES')
  process.exit(2)
}

const udx = new UDX()
const socket = udx.createSocket()
socket.bind(Number(localPort), '0.0.0.0')
// Stream ids: the receiver is 2, the sender 1; each names the other as its remote.
const stream = udx.createStream(role === 'recv' ? 2 : 1)
stream.connect(socket, role === 'recv' ? 1 : 2, Number(peerPort), peerHost!)
stream.on('error', (err: Error) => { console.error(err.message); process.exit(1) })

if (role === 'recv') {
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
  console.log('ready')
} else {
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
  // The receiver ends the run; give up if it never does.
  setTimeout(() => process.exit(1), 120_000).unref()
  stream.on('close', () => process.exit(0))
}
