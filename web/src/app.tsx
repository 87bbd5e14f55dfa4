// The console's frame: a header with the daemon's state, a navigation bar, and the pages.

import { AppShell, Badge, Group, NavLink, Text, Title, Tooltip } from '@mantine/core'
import { Link, Redirect, Route, Switch, useLocation } from 'wouter'
import { call } from './rpc.ts'
import { usePoll } from './use-poll.ts'
import { bytes } from './format.ts'
import { SessionProvider, useSession } from './session.tsx'
import { ImagesPage } from './pages/images-page.tsx'
import { EditorPage } from './pages/editor-page.tsx'
import { JobsPage } from './pages/jobs-page.tsx'
import { FleetPage } from './pages/fleet-page.tsx'

const PAGES = [
  { path: '/images', label: 'Image repository', description: 'built, imported and fetched images' },
  { path: '/editor', label: 'Spec editor', description: 'describe an image and build it' },
  { path: '/jobs', label: 'Jobs', description: 'builds, fetches, exports' },
  { path: '/fleet', label: 'Fleet', description: 'peers and transfers' }
]

export function App () {
  return (
    <SessionProvider>
      <Shell />
    </SessionProvider>
  )
}

function Shell () {
  const [location] = useLocation()
  const status = usePoll(() => call('daemon.status', {}), 2000)
  const { session } = useSession()
  const s = status.data
  return (
    <AppShell header={{ height: 56 }} navbar={{ width: 240, breakpoint: 'sm' }} padding='md'>
      <AppShell.Header>
        <Group h='100%' px='md' justify='space-between'>
          <Group gap='xs'>
            <Title order={3}>osfarm</Title>
            <Text c='dimmed' size='sm'>console</Text>
          </Group>
          <Group gap='xs' data-testid='daemon-status'>
            {status.error && <Badge color='red' variant='light'>{status.error.code}</Badge>}
            {s && (
              <>
                <Tooltip label={s.dataDir}><Badge variant='light'>osfarmd {s.version}</Badge></Tooltip>
                <Badge variant='light' color='gray'>{s.store.backend} store: {bytes(s.store.bytesUsed)} used, {bytes(s.store.bytesFree)} free</Badge>
                <Badge variant='light' color={s.jobs.running ? 'blue' : 'gray'}>{s.jobs.running} running</Badge>
              </>
            )}
            {session && session.access !== 'full' && <Badge color={session.access === 'read' ? 'yellow' : 'red'}>{session.access === 'read' ? 'read-only' : 'no access'}</Badge>}
          </Group>
        </Group>
      </AppShell.Header>
      <AppShell.Navbar p='xs'>
        {PAGES.map(p => (
          <NavLink key={p.path} component={Link} href={p.path} label={p.label} description={p.description}
            active={location === p.path || location.startsWith(p.path + '/')} data-testid={`nav-${p.path.slice(1)}`} />
        ))}
      </AppShell.Navbar>
      <AppShell.Main>
        <Switch>
          <Route path='/images'><ImagesPage /></Route>
          <Route path='/editor'><EditorPage /></Route>
          <Route path='/jobs'><JobsPage /></Route>
          <Route path='/jobs/:id'>{params => <JobsPage jobId={params.id} />}</Route>
          <Route path='/fleet'><FleetPage /></Route>
          <Route><Redirect to='/images' /></Route>
        </Switch>
      </AppShell.Main>
    </AppShell>
  )
}
