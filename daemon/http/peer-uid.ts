// Which local user owns the other end of a loopback TCP connection: the kernel lists every TCP
// socket of this network namespace, with its owner's uid, in /proc/net/tcp and /proc/net/tcp6.
// This is how the HTTP listener gives a local browser the same trust as the Unix socket.

import fs from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'

const TABLES = ['/proc/net/tcp', '/proc/net/tcp6']

export function isLoopback (address: string | undefined): boolean {
  if (!address) return false
  const a = address.replace(/^::ffff:/i, '')
  return a === '::1' || (net.isIPv4(a) && a.startsWith('127.'))
}

// The uid that owns the socket at `client` connected to `server`, and the socket's inode, or
// undefined if neither table lists it (the connection is gone, or it did not come from this host).
export async function loopbackPeer (client: { address: string, port: number }, server: { address: string, port: number }): Promise<{ uid: number, inode: number } | undefined> {
  const want = `${endpoint(client.address, client.port)} ${endpoint(server.address, server.port)}`
  for (const table of TABLES) {
    const text = await fs.readFile(table, 'latin1').catch(() => '')
    for (const line of text.split('\n')) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
      const f = line.trim().split(/\s+/)
      if (f.length < 10 || `${f[1]} ${f[2]}` !== want) continue
      const uid = Number(f[7])
      const inode = Number(f[9])
      if (Number.isInteger(uid) && Number.isInteger(inode)) return { uid, inode }
    }
  }
  return undefined
}

// Whether some process holding the socket `inode` shares this process's mount namespace: a root
// process in a build's sandbox (its own mount namespace, this host's network) is not the host's
// root. Scans the processes of `uid` only.
export async function heldInOurMountNamespace (inode: number, uid: number): Promise<boolean> {
  const ours = await fs.readlink('/proc/self/ns/mnt').catch(() => undefined)
  if (!ours) return false
  const want = `socket:[${inode}]`
  for (const pid of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue
    const st = await fs.stat(`/proc/${pid}`).catch(() => undefined)
    if (!st || st.uid !== uid) continue
    const fds = await fs.readdir(`/proc/${pid}/fd`).catch(() => [] as string[])
    for (const fd of fds) {
      if (await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '') !== want) continue
      if (await fs.readlink(`/proc/${pid}/ns/mnt`).catch(() => '') === ours) return true
      break
    }
  }
  return false
}

// The kernel prints each address as 32-bit words in host byte order, then ":PORT" in hex.
// IPv4-mapped IPv6 peers of a dual-stack listener appear in tcp6 as ::ffff:a.b.c.d.
function endpoint (address: string, port: number): string {
  const p = port.toString(16).toUpperCase().padStart(4, '0')
  if (net.isIPv4(address)) return `${word(ipv4Bytes(address))}:${p}`
  const bytes = ipv6Bytes(address)
  let hex = ''
  for (let i = 0; i < 16; i += 4) hex += word(bytes.subarray(i, i + 4))
  return `${hex}:${p}`
}

function word (b: Uint8Array): string {
  const ordered = os.endianness() === 'LE' ? [b[3]!, b[2]!, b[1]!, b[0]!] : [...b]
  return ordered.map(x => x.toString(16).toUpperCase().padStart(2, '0')).join('')
}

function ipv4Bytes (a: string): Uint8Array {
  return Uint8Array.from(a.split('.').map(Number))
}

function ipv6Bytes (address: string): Uint8Array {
  const out = new Uint8Array(16)
  let a = address.replace(/%.*$/, '')
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(a)
  if (v4) {
    out.set(ipv4Bytes(v4[1]!), 12)
    a = a.slice(0, -v4[1]!.length) + '0:0'
  }
  const [head, tail] = a.split('::') as [string, string | undefined]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t]
  groups.forEach((g, i) => {
    if (v4 && i >= 6) return
    const n = parseInt(g || '0', 16)
    out[i * 2] = n >> 8
    out[i * 2 + 1] = n & 0xff
  })
  return out
}
