// Tells systemd about the daemon's state (Type=notify): READY=1 once the socket accepts and the
// catalog is open, STOPPING=1 when a stop begins. Node cannot write to the AF_UNIX datagram
// socket in NOTIFY_SOCKET itself, so this runs systemd-notify with our PID (the unit sets
// NotifyAccess=all so the helper's message counts whichever PID systemd sees).

import { execFile } from 'node:child_process'
import type { Logger } from './log.js'

const NOTIFY_TIMEOUT_MS = 5000

export function sdNotify (state: string, log: Logger): Promise<void> {
  if (!process.env.NOTIFY_SOCKET) return Promise.resolve()
  return new Promise(resolve => {
    execFile('systemd-notify', [`--pid=${process.pid}`, state], { timeout: NOTIFY_TIMEOUT_MS }, err => {
      if (err) log.warn('systemd-notify failed', { state, error: err.message })
      resolve()
    })
  })
}
