// What every osfarmctl command gets: a way to reach the daemon with the global options.

import type { Command } from 'commander'
import { OsfarmClient } from './client.js'
import { VERSION } from './version.js'

export interface CliContext {
  connect (): Promise<OsfarmClient>
}

export function cliContext (program: Command): CliContext {
  return {
    async connect () {
      const socket: string | undefined = program.opts().socket
      const client = await OsfarmClient.connect(socket)
      const daemon = await client.call('daemon.version', {})
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
