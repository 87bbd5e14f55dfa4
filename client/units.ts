// The CLI's one parser of sizes and rates, so every flag reads units the same way:
//   sizes (bytes): "4096", "512K", "2G", "10MiB", "1.5GB": K, M, G, T are powers of 1024;
//   rates (bytes per second): "5000000", "20M" = 20 MB/s, "1.5G": K, M, G are powers of 1000
//   (as links are sold), and "100mbit" or "100mbps" in bits.

import { BAD_PARAMS } from '../protocol/errors.js'

const QUANTITY = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b|bit|bps|b\/s)?$/i

export const SIZE_UNITS = 'bytes; K, M, G, T are powers of 1024 (e.g. 512M, 2G)'
export const RATE_UNITS = 'bytes/s; K, M, G are powers of 1000, "mbit" bits (e.g. 20M = 20 MB/s, 100mbit)'

export function parseSize (text: string): number {
  const m = QUANTITY.exec(text.trim())
  if (!m || /bit|bps|\//i.test(m[3] ?? '')) throw BAD_PARAMS(`expected a size such as 512M or 2G, got ${JSON.stringify(text)}`)
  return Math.round(Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase()))
}

export function parseRate (text: string): number {
  const m = QUANTITY.exec(text.trim())
  if (!m || (m[2] ?? '').toLowerCase() === 't' || /^i/i.test(m[3] ?? '')) throw BAD_PARAMS(`not a rate: ${JSON.stringify(text)} (e.g. 20M for 20 MB/s, 100mbit)`)
  const scale = 1000 ** ' kmg'.indexOf((m[2] || ' ').toLowerCase())
  const bits = /^(bit|bps)$/i.test(m[3] ?? '')
  return Math.round(Number(m[1]) * scale / (bits ? 8 : 1))
}
