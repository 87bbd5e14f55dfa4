// Output helpers for osfarmctl: JSON for scripts, aligned tables and human sizes for people.

export function printJson (value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n')
}

export function printTable (headers: string[], rows: Array<Array<string | number>>): void {
  const cells = [headers, ...rows.map(r => r.map(String))]
  const widths = headers.map((_, i) => Math.max(...cells.map(r => (r[i] ?? '').length)))
  for (const row of cells) {
    process.stdout.write(row.map((c, i) => i === row.length - 1 ? c : c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n')
  }
}

export function printFields (fields: Array<[string, string | number | undefined]>): void {
  const width = Math.max(...fields.map(([k]) => k.length))
  for (const [k, v] of fields) if (v !== undefined) process.stdout.write(`${(k + ':').padEnd(width + 1)} ${v}\n`)
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
export function humanBytes (n: number): string {
  let i = 0
  let v = n
  while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++ }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[i]}`
}

export function shortId (id: string, n = 12): string {
  return id.slice(0, n)
}
