// apt-get and dpkg, run inside a chroot: the install command line, and the reading of their
// output into error codes (unknown package, unreachable mirror, disk full).

import { BUILD_FAILED, MIRROR_UNREACHABLE, PACKAGE_NOT_FOUND, SIZE_TOO_SMALL, type OsfarmError } from '../../../protocol/errors.js'
import { lastLines } from '../../tools/run.js'

export const APT_ENV: Record<string, string> = {
  DEBIAN_FRONTEND: 'noninteractive',
  DEBCONF_NONINTERACTIVE_SEEN: 'true',
  DEBCONF_NOWARNINGS: 'yes'
}

export const APT_OPTIONS = [
  '-o', 'APT::Install-Recommends=false',
  '-o', 'APT::Install-Suggests=false',
  '-o', 'Dpkg::Use-Pty=false',
  '-o', 'Dpkg::Options::=--force-confdef',
  '-o', 'Dpkg::Options::=--force-confold',
  // No fsync per file: the layer's volume is synced once, when it is committed.
  '-o', 'Dpkg::Options::=--force-unsafe-io',
  // Nothing but dpkg's own work lands in the image while it installs: apt's binary caches and
  // the logs of apt and dpkg would be written by other processes at times of their own, and
  // the kernel places every file by the order of allocations (see README, determinism).
  '-o', 'Dir::Cache::pkgcache=',
  '-o', 'Dir::Cache::srcpkgcache=',
  '-o', 'Dir::Log::Terminal=/dev/null',
  '-o', 'Dir::Log::History=/dev/null',
  '-o', 'Dir::Log::Planner=/dev/null',
  '-o', 'Dpkg::Options::=--log=/dev/null',
  '-o', 'Acquire::Retries=1',
  '-o', 'Acquire::http::Timeout=20'
]

export function updateArgs (): string[] {
  return ['-q', ...APT_OPTIONS, '--error-on=any', 'update']
}

export function installArgs (packages: string[], downloadOnly = false): string[] {
  return ['-q', '-y', ...APT_OPTIONS, ...(downloadOnly ? ['--download-only'] : []), 'install', '--', ...packages]
}

const UNREACHABLE = /Could not connect|Connection refused|Temporary failure resolving|Could not resolve|Network is unreachable|Connection timed out|Failed to fetch|Unable to connect|No route to host|Some index files failed to download/i

// What went wrong, from the tail of apt's (or mmdebstrap's) output.
export function aptFailure (tail: string[], what: string): OsfarmError {
  const text = tail.join('\n')
  const missing = [...text.matchAll(/Unable to locate package (\S+)|Package '?([^'\s]+)'? has no installation candidate|E: Package '([^']+)' has no installation candidate/g)]
    .map(m => m[1] ?? m[2] ?? m[3]).filter(Boolean)
  if (missing.length) return PACKAGE_NOT_FOUND(`no such package: ${[...new Set(missing)].join(', ')}`, { packages: [...new Set(missing)] })
  if (/No space left on device|not enough free space|You don't have enough free space/i.test(text)) {
    return SIZE_TOO_SMALL(`the image ran out of space during ${what} (${lastLines(tail, 2)})`)
  }
  if (UNREACHABLE.test(text)) {
    const line = tail.find(l => UNREACHABLE.test(l)) ?? ''
    return MIRROR_UNREACHABLE(`${what}: ${line.trim()}`)
  }
  return BUILD_FAILED(`${what} failed: ${lastLines(tail)}`)
}
