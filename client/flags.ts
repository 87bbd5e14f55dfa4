// Flags that several commands share, declared once so they read the same everywhere.
//
// Waiting: every command that starts a job takes --wait (follow it, with progress, and print
// its result) and --no-wait (print the job and return). Each command states its default; other
// time limits are named for what they bound (fetch --peer-timeout), never --wait.

import { Option, type Command } from 'commander'

export function waitFlags (cmd: Command, byDefault: boolean, what = 'the job'): Command {
  return cmd
    .option('--wait', `wait for ${what}, with progress, and print its result${byDefault ? ' (the default)' : ''}`)
    .option('--no-wait', `return ${what} at once${byDefault ? '' : ' (the default)'}`)
}

// Whether to wait, given the parsed options and the command's default.
export function waits (opts: { wait?: boolean }, byDefault: boolean): boolean {
  return opts.wait ?? byDefault
}

export function jsonFlag (cmd: Command, what = 'print JSON'): Command {
  return cmd.option('--json', what)
}

// A flag kept for old scripts, not shown in help.
export function hiddenFlag (cmd: Command, flags: string, description: string): Command {
  return cmd.addOption(new Option(flags, description).hideHelp())
}

// Labels given as flags or arguments, each of which may hold several: "a=1,b=2" is two.
export function labelList (values: string[]): string[] {
  return values.flatMap(v => v.split(',')).map(l => l.trim()).filter(Boolean)
}
