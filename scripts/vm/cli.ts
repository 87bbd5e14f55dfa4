// osfarm-vm: run a command in the QEMU test guest from a shell.
//   node dist/scripts/vm/cli.js [--disk SIZE[:PATH]]... [--env NAME=VALUE]... [--timeout S] [--refresh] -- COMMAND...
// SIZE takes a K/M/G suffix. Prints the command's output as it comes; exits with its status.

import { ensureGuestAssets } from './guest-assets.js'
import { runInGuest, type GuestDisk } from './guest-runner.js'

const USAGE = 'usage: osfarm-vm [--disk SIZE[:PATH]]... [--env NAME=VALUE]... [--timeout SECONDS] [--refresh] [--verbose] -- COMMAND...'

function parseSize (text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text)
  if (!m) throw new Error(`bad size ${JSON.stringify(text)}`)
  const shift = { '': 0, K: 10, M: 20, G: 30, T: 40 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T']
  return Number(m[1]) * 2 ** shift
}

async function main (argv: string[]): Promise<number> {
  const disks: GuestDisk[] = []
  const env: Record<string, string> = {}
  let timeoutMs = 600_000
  let verbose = false
  let i = 0
  for (; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') { i++; break }
    if (a === '--disk') {
      const [size, file] = (argv[++i] ?? '').split(':', 2)
      disks.push({ size: parseSize(size!), path: file })
    } else if (a === '--env') {
      const [k, ...v] = (argv[++i] ?? '').split('=')
      env[k!] = v.join('=')
    } else if (a === '--timeout') timeoutMs = Number(argv[++i]) * 1000
    else if (a === '--refresh') await ensureGuestAssets({ refresh: true })
    else if (a === '--verbose') verbose = true
    else if (a === '--help' || a === '-h') { console.log(USAGE); return 0 } else break
  }
  const command = argv.slice(i).join(' ')
  if (!command) { console.error(USAGE); return 64 }
  const r = await runInGuest({
    command,
    disks,
    env,
    timeoutMs,
    onStdout: s => process.stdout.write(s),
    onStderr: s => process.stderr.write(s)
  })
  if (verbose || r.exitCode !== 0) process.stderr.write(r.console)
  process.stderr.write(`osfarm-vm: ${r.kernelVersion}, command started after ${r.bootMs} ms, exit ${r.exitCode} after ${r.totalMs} ms\n`)
  return r.exitCode
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, err => {
  console.error(err.message)
  if (err.details?.console) console.error(err.details.console)
  process.exitCode = 70
})
