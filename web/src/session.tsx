// What this browser may do (GET /session), shared by the pages: write buttons are disabled for
// read-only users, and a 401 from any call opens the token prompt.

import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from 'react'
import { Button, Modal, PasswordInput, Stack, Text } from '@mantine/core'
import { getSession, onAuthRequired, signIn, type Session } from './rpc.ts'

const SessionContext = createContext<{ session: Session | undefined, refresh: () => void }>({ session: undefined, refresh: () => {} })

export function useSession () {
  return useContext(SessionContext)
}

export function canWrite (session: Session | undefined): boolean {
  return session?.access === 'full'
}

export function SessionProvider ({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<Session>()
  const [prompt, setPrompt] = useState(false)
  const [token, setToken] = useState('')
  const [wrong, setWrong] = useState(false)

  const refresh = useCallback(() => {
    getSession().then(s => {
      setSession(s)
      if (s.access === 'none' && s.tokenRequired) setPrompt(true)
    }, () => setSession(undefined))
  }, [])

  useEffect(() => {
    refresh()
    return onAuthRequired(() => setPrompt(true))
  }, [refresh])

  const submit = async () => {
    if (await signIn(token)) {
      setPrompt(false)
      setToken('')
      setWrong(false)
      refresh()
      window.location.reload()
    } else {
      setWrong(true)
    }
  }

  return (
    <SessionContext.Provider value={{ session, refresh }}>
      {children}
      <Modal opened={prompt} onClose={() => setPrompt(false)} title='Sign in to osfarmd' centered>
        <Stack>
          <Text size='sm'>This daemon wants its HTTP token (the <code>http.token</code> of its config).</Text>
          <PasswordInput label='Token' value={token} onChange={e => setToken(e.currentTarget.value)} error={wrong ? 'osfarmd did not accept this token' : undefined} data-autofocus
            onKeyDown={e => { if (e.key === 'Enter') submit() }} />
          <Button onClick={submit} disabled={!token}>Sign in</Button>
        </Stack>
      </Modal>
    </SessionContext.Provider>
  )
}
