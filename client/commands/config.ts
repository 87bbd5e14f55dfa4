// osfarmctl config check FILE: validates an osfarmd config file without a daemon.

import type { Command } from 'commander'
import { readConfigFile } from '../../protocol/config.js'
import { printJson } from '../output.js'

export function register (program: Command): void {
  const config = program.command('config').description('osfarmd configuration files')
  config.command('check <file>')
    .description('validate a config file (every key, type and value)')
    .option('--json', 'print the parsed settings as JSON')
    .action(async (file, opts) => {
      const settings = await readConfigFile(file)
      if (opts.json) return printJson(settings)
      console.log(`${file}: ok (${Object.keys(settings).length} settings)`)
    })
}
