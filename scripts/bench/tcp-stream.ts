// The kernel's transport, for the transfer bench: one plain TCP connection (no encryption,
// framing or disk) moving BYTES from one lab host to another, beside the raw UDX stream
// (udx-stream.ts). What osfarm's TCP lanes ride on.
//
//   node dist/scripts/bench/tcp-stream.js recv LOCAL_HOST LOCAL_PORT BYTES
//   node dist/scripts/bench/tcp-stream.js send PEER_HOST PEER_PORT BYTES
//
// The receiver prints "ready", then {"seconds": first byte to last, "cpu": its CPU seconds}.

import net from 'node:net'

const [role, host, port, bytesArg] = process.argv.slice(2)
const bytes = Number(bytesArg)
if ((role !== 'send' && role !== 'recv') || !host || !Number.isInteger(Number(port)) || !Number.isSafeInteger(bytes) || bytes <= 0) {
  console.error('usage: tcp-stream.js recv LOCAL_HOST LOCAL_PORT BYTES | send PEER_HOST PEER_PORT BYTES')
  process.exit(2)
}
// The run ends with the receiver; give up if it never does.
setTimeout(() => process.exit(1), 120_000).unref()

if (role === 'recv') {
  const server = net.createServer(socket => {
    let got = 0
    let t0 = 0
    const cpu0 = process.cpuUsage()
    socket.on('data', (d: Buffer) => {
      if (!t0) t0 = performance.now()
      got += d.length
      if (got < bytes) return
      const cpu = process.cpuUsage(cpu0)
      console.log(JSON.stringify({ seconds: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6 }))
      process.exit(0)
    })
  })
  server.listen(Number(port), host, () => console.log('ready'))
} else {
  const socket = net.connect({ host, port: Number(port), noDelay: true })
  const chunk = Buffer.alloc(64 << 10, 0x5a)
  let sent = 0
  const pump = (): void => {
    while (sent < bytes) {
      const n = Math.min(chunk.length, bytes - sent)
      sent += n
      if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { socket.once('drain', pump); return }
    }
  }
  socket.on('connect', pump)
  socket.on('error', () => process.exit(1))
  socket.on('close', () => process.exit(0))
}
