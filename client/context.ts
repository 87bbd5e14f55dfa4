// What every osfarmctl command gets: a way to reach the daemon with the global options.

import fs from 'node:fs'
import type { Command } from 'commander'
import { DEFAULT_SOCKET, OsfarmClient } from './client.js'
import { adminSocketPath } from '../protocol/rpc.js'
import { VERSION } from './version.js'

export interface CliContext {
  connect (): Promise<OsfarmClient>
}

export function cliContext (program: Command): CliContext {
  return {
    async connect () {
      const socket: string = program.opts().socket ?? DEFAULT_SOCKET
      // Root uses the admin socket where the daemon limits writes to root.
      const admin = adminSocketPath(socket)
      const client = await OsfarmClient.connect(process.getuid?.() === 0 && fs.existsSync(admin) ? admin : socket)
      const daemon = await client.call('daemon.version', {})
      client.rights = daemon.rights ?? 'user'
      if (daemon.version !== VERSION) {
        process.stderr.write(`osfarmctl: warning: client ${VERSION} and daemon ${daemon.version} differ\n`)
      }
      return client
    }
  }
}

// Runs `fn` with a connected client and always closes it.
export async function withClient<T> (ctx: CliContext, fn: (c: OsfarmClient) => Promise<T>): Promise<T> {
  const client = await ctx.connect()
  try {
    return await fn(client)
  } finally {
    client.close()
  }
}
