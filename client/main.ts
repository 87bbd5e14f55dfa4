#!/usr/bin/env node
// osfarmctl: the command line for osfarmd. Only this file calls process.exit.

import { Command } from 'commander'
import { OsfarmError } from '../protocol/errors.js'
import { cliContext } from './context.js'
import { VERSION } from './version.js'
import * as status from './commands/status.js'
import * as image from './commands/image.js'
import * as build from './commands/build.js'
import * as job from './commands/job.js'
import * as fetch from './commands/fetch.js'
import * as fleet from './commands/fleet.js'
import * as peer from './commands/peer.js'
import * as stats from './commands/stats.js'
import * as config from './commands/config.js'
import * as completion from './commands/completion.js'
import * as seed from './commands/seed.js'
import * as prestage from './commands/prestage.js'
import * as rebuild from './commands/rebuild.js'

const program = new Command('osfarmctl')
  .description('control osfarmd: build, store and move VM images')
  .version(VERSION)
  .option('-s, --socket <path>', 'osfarmd socket (env OSFARM_SOCKET)', process.env.OSFARM_SOCKET)
  .showHelpAfterError()

const ctx = cliContext(program)
for (const command of [status, image, build, job, fetch, fleet, peer, stats, config, completion, seed, prestage, rebuild]) command.register(program, ctx)

program.parseAsync().then(() => process.exit(process.exitCode ?? 0), err => {
  const e = OsfarmError.from(err)
  process.stderr.write(`osfarmctl: ${e.message}\n`)
  process.exit(e.exitCode)
})
