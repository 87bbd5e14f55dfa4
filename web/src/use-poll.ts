// Data that follows the daemon: fetched at once, then again every `intervalMs` while the page is
// visible, and on demand (reload) after the user changes something.

import { useCallback, useEffect, useRef, useState } from 'react'
import { RpcError } from './rpc.ts'

export interface Polled<T> {
  data: T | undefined
  error: RpcError | undefined
  loading: boolean
  reload: () => void
}

export function usePoll<T> (load: () => Promise<T>, intervalMs: number, deps: unknown[] = []): Polled<T> {
  const [data, setData] = useState<T>()
  const [error, setError] = useState<RpcError>()
  const [loading, setLoading] = useState(true)
  const [tick, setTick] = useState(0)
  const loadRef = useRef(load)
  loadRef.current = load

  useEffect(() => {
    let live = true
    let timer: ReturnType<typeof setTimeout> | undefined
    const run = async () => {
      try {
        const value = await loadRef.current()
        if (!live) return
        setData(value)
        setError(undefined)
      } catch (err) {
        if (!live) return
        setError(err instanceof RpcError ? err : new RpcError('INTERNAL', String(err)))
      } finally {
        if (live) {
          setLoading(false)
          timer = setTimeout(run, document.hidden ? intervalMs * 4 : intervalMs)
        }
      }
    }
    run()
    return () => { live = false; clearTimeout(timer) }
  }, [intervalMs, tick, ...deps])

  const reload = useCallback(() => setTick(t => t + 1), [])
  return { data, error, loading, reload }
}
