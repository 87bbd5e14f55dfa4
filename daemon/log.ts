// Structured logs: one line per event on stdout (journald adds the time), `level=… msg=… k=v`.
// Under systemd (JOURNAL_STREAM set) each line starts with a `<N>` syslog priority, which
// journald turns into the entry's level. Callers pass fields, never secrets: keys and fleet
// secrets are not logged anywhere.

import type { LogLevel } from '../protocol/config.js'

export { LOG_LEVELS, type LogLevel } from '../protocol/config.js'
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }
const SYSLOG_PRIORITY: Record<LogLevel, number> = { debug: 7, info: 6, warn: 4, error: 3 }
const TO_JOURNAL = process.env.JOURNAL_STREAM !== undefined

export type LogFields = Record<string, string | number | boolean | undefined | null>

export interface Logger {
  debug (msg: string, fields?: LogFields): void
  info (msg: string, fields?: LogFields): void
  warn (msg: string, fields?: LogFields): void
  error (msg: string, fields?: LogFields): void
  child (fields: LogFields): Logger
}

export function createLogger (level: LogLevel = 'info', base: LogFields = {}, write: (line: string) => void = line => process.stdout.write(line + '\n')): Logger {
  const min = RANK[level]
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (RANK[lvl] < min) return
    let line = `${TO_JOURNAL ? `<${SYSLOG_PRIORITY[lvl]}>` : ''}level=${lvl} msg=${quote(msg)}`
    for (const [k, v] of Object.entries({ ...base, ...fields })) {
      if (v === undefined || v === null) continue
      line += ` ${k}=${typeof v === 'string' ? quote(v) : v}`
    }
    write(line)
  }
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: fields => createLogger(level, { ...base, ...fields }, write)
  }
}

function quote (s: string): string {
  return /^[\w./:@+-]+$/.test(s) ? s : JSON.stringify(s)
}
