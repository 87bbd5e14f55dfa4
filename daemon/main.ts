#!/usr/bin/env node
// osfarmd: the per-host daemon. `osfarmd [run]` serves in the foreground until SIGTERM/SIGINT.

import { Command, Option } from 'commander'
import { loadConfig, type Config } from './config.js'
import { createLogger } from './log.js'
import { Daemon, VERSION } from './daemon.js'
import { OsfarmError } from '../protocol/errors.js'
import { startBootstrapNode } from './fleet/bootstrap-node.js'

const program = new Command('osfarmd')
  .description('osfarm host daemon: builds, stores and moves VM images')
  .version(VERSION)

program.command('run', { isDefault: true })
  .description('run the daemon in the foreground')
  .option('-c, --config <file>', 'JSON config file')
  .option('--data <dir>', 'data directory (catalog, volumes)')
  .option('--socket <path>', 'JSON-RPC socket path')
  .addOption(new Option('--store <backend>', 'layer store backend').choices(['file', 'lvm']))
  .option('--block-size <bytes>', 'block size of new manifests', Number)
  .option('--hash-threads <n>', 'hashing threads (0: one per core)', Number)
  .addOption(new Option('--log-level <level>', 'log level').choices(['debug', 'info', 'warn', 'error']))
  .option('--http <host:port>', 'serve the web console and JSON-RPC over HTTP (e.g. 127.0.0.1:7480)')
  .action(async opts => {
    const flags: Partial<Config> = {
      dataDir: opts.data,
      socket: opts.socket,
      store: opts.store,
      blockSize: opts.blockSize,
      hashThreads: opts.hashThreads,
      logLevel: opts.logLevel,
      http: opts.http === undefined ? undefined : { listen: opts.http }
    }
    const config = await loadConfig(opts.config, flags)
    const log = createLogger(config.logLevel)
    const daemon = new Daemon(config, log)
    await daemon.start()
    let stopping = false
    const stop = (signal: string) => {
      if (stopping) return
      stopping = true
      log.info('signal received', { signal })
      daemon.stop().then(() => process.exit(0), err => {
        log.error('unclean stop', { error: (err as Error).message })
        process.exit(1)
      })
    }
    process.on('SIGTERM', () => stop('SIGTERM'))
    process.on('SIGINT', () => stop('SIGINT'))
  })

program.command('dht')
  .description('run a DHT bootstrap node for a fleet (it needs nothing outside the fleet)')
  .requiredOption('--host <address>', 'address to bind and announce')
  .requiredOption('--port <port>', 'UDP port', Number)
  .option('--bootstrap <nodes>', 'other bootstrap nodes, host:port,...')
  .action(async opts => {
    const node = await startBootstrapNode({ host: opts.host, port: opts.port, bootstrap: opts.bootstrap ? String(opts.bootstrap).split(',') : [] })
    const addr = node.address()
    process.stdout.write(`osfarmd dht ready ${addr?.host}:${addr?.port}\n`)
    const stop = () => { node.destroy().then(() => process.exit(0), () => process.exit(1)) }
    process.on('SIGTERM', stop)
    process.on('SIGINT', stop)
  })

program.parseAsync().catch(err => {
  const e = OsfarmError.from(err)
  process.stderr.write(`osfarmd: ${e.message}\n`)
  process.exit(e.exitCode)
})
