// The console's client for osfarmd's HTTP endpoint: the same JSON-RPC methods and types as
// osfarmctl (protocol/rpc.ts), over POST /rpc. `stream` asks for server-sent events and gets the
// call's notifications (job.watch: progress and log lines) as they happen, then its result.

import type { MethodName, Notifications, Params, Result } from '../../protocol/rpc.ts'

export interface SpecIssue {
  field: string
  line?: number
  message: string
}

// A daemon error: its stable code (protocol/errors.ts), message and data (e.g. SPEC_INVALID's
// issues, each naming a field of the spec).
export class RpcError extends Error {
  readonly code: string
  readonly data: Record<string, unknown>
  readonly status: number

  constructor (code: string, message: string, data: Record<string, unknown> = {}, status = 0) {
    super(message)
    this.code = code
    this.data = data
    this.status = status
  }

  get issues (): SpecIssue[] {
    const issues = this.data.issues
    if (Array.isArray(issues)) return issues as SpecIssue[]
    if (typeof this.data.field === 'string') return [{ field: this.data.field, message: this.message }]
    return []
  }
}

type Listener = () => void
const authListeners = new Set<Listener>()

// Called when the daemon asks for a token (HTTP 401).
export function onAuthRequired (l: Listener): () => void {
  authListeners.add(l)
  return () => authListeners.delete(l)
}

let nextId = 1

function request (method: string, params: unknown, accept: string, signal?: AbortSignal): Promise<Response> {
  return fetch('/rpc', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: accept },
    credentials: 'same-origin',
    body: JSON.stringify({ jsonrpc: '2.0', id: nextId++, method, params }),
    signal
  }).catch(err => {
    if (signal?.aborted) throw err
    throw new RpcError('DAEMON_UNREACHABLE', `cannot reach osfarmd: ${(err as Error).message}`)
  })
}

function settle<T> (body: unknown, status: number): T {
  const b = body as { result?: T, error?: { message: string, data?: Record<string, unknown> } } | undefined
  if (status === 401) for (const l of authListeners) l()
  if (!b || typeof b !== 'object') throw new RpcError('DAEMON_UNREACHABLE', `unexpected answer (HTTP ${status})`, {}, status)
  if (b.error) {
    const data = b.error.data ?? {}
    throw new RpcError(typeof data.code === 'string' ? data.code : 'INTERNAL', b.error.message, data, status)
  }
  return b.result as T
}

export async function call<M extends MethodName> (method: M, params: Params<M>, signal?: AbortSignal): Promise<Result<M>> {
  const res = await request(method, params, 'application/json', signal)
  const body = await res.json().catch(() => undefined)
  return settle<Result<M>>(body, res.status)
}

export type NotificationHandler = <N extends keyof Notifications>(method: N, params: Notifications[N]) => void

export async function stream<M extends MethodName> (method: M, params: Params<M>, onNotification: NotificationHandler, signal?: AbortSignal): Promise<Result<M>> {
  const res = await request(method, params, 'text/event-stream', signal)
  if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream') || !res.body) {
    return settle<Result<M>>(await res.json().catch(() => undefined), res.status)
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffered = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buffered += value
    for (let end = buffered.indexOf('\n\n'); end !== -1; end = buffered.indexOf('\n\n')) {
      const frame = buffered.slice(0, end)
      buffered = buffered.slice(end + 2)
      let event = 'message'
      let data = ''
      for (const line of frame.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data += line.slice(5).trim()
      }
      if (!data) continue
      const msg = JSON.parse(data)
      if (event === 'notification') onNotification(msg.method, msg.params)
      else if (event === 'response') return settle<Result<M>>(msg, res.status)
    }
  }
  throw new RpcError('DAEMON_UNREACHABLE', 'the event stream ended without an answer')
}

export interface Session {
  access: 'full' | 'read' | 'none'
  tokenRequired: boolean
}

export async function getSession (): Promise<Session> {
  const res = await fetch('/session', { credentials: 'same-origin' })
  return res.json()
}

// Trades a token for the HttpOnly cookie that links and downloads carry.
export async function signIn (token: string): Promise<boolean> {
  const res = await fetch('/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` }, credentials: 'same-origin' })
  return res.ok
}

export async function signOut (): Promise<void> {
  await fetch('/session', { method: 'DELETE', credentials: 'same-origin' })
}

export function downloadUrl (imageId: string, format: 'raw' | 'qcow2'): string {
  return `/images/${encodeURIComponent(imageId)}/download?format=${format}`
}
