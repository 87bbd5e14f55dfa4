// The fleet: this host's identity and limits, the peers connected now with their byte counts and
// receive rates, the transfers running, and the images peers advertise (fetch one here).

import { Alert, Badge, Button, Code, CopyButton, Group, Paper, SimpleGrid, Stack, Table, Text, Title, Tooltip } from '@mantine/core'
import { useLocation } from 'wouter'
import { useState, type ReactNode } from 'react'
import { call, RpcError } from '../rpc.ts'
import { usePoll } from '../use-poll.ts'
import { bytes, duration, rate, short } from '../format.ts'
import { canWrite, useSession } from '../session.tsx'
import { JobProgress } from '../components/job-progress.tsx'

export function FleetPage () {
  const fleet = usePoll(() => call('fleet.show', {}), 5000)
  const peers = usePoll(() => call('peer.list', {}), 2000)
  const adverts = usePoll(() => call('fleet.images', {}), 5000)
  const jobs = usePoll(() => call('job.list', {}), 2000)
  const images = usePoll(() => call('image.list', {}), 5000)
  const { session } = useSession()
  const [, navigate] = useLocation()
  const [problem, setProblem] = useState<RpcError>()
  const f = fleet.data
  const transfers = (jobs.data ?? []).filter(j => j.kind === 'fetch' && j.state === 'running')
  const local = new Set((images.data ?? []).map(i => i.root))

  const fetchRoot = async (root: string, name: string) => {
    setProblem(undefined)
    try {
      const job = await call('image.fetch', { ref: root, name })
      navigate(`/jobs/${job.id}`)
    } catch (err) {
      setProblem(err as RpcError)
    }
  }

  const item = (label: string, value: ReactNode) => <Paper withBorder p='xs'><Text size='xs' c='dimmed'>{label}</Text><div>{value}</div></Paper>
  return (
    <Stack>
      <Title order={2}>Fleet</Title>
      {fleet.error && <Alert color='red' title={fleet.error.code}>{fleet.error.message}</Alert>}
      {problem && <Alert color='red' title={problem.code} withCloseButton onClose={() => setProblem(undefined)}>{problem.message}</Alert>}
      {f && !f.configured && <Alert color='yellow' title='No fleet configured'>This host is in no fleet yet: <Code>osfarmctl fleet init</Code> creates one, <Code>osfarmctl fleet init --secret …</Code> joins one. Its key, for the others’ allow-lists:</Alert>}
      {f && (
        <SimpleGrid cols={{ base: 1, md: 3 }} data-testid='fleet-info'>
          {item('This host’s key', <CopyButton value={f.publicKey}>{({ copied, copy }) => <Tooltip label={copied ? 'copied' : 'copy'}><Code style={{ cursor: 'pointer' }} onClick={copy}>{short(f.publicKey, 24)}…</Code></Tooltip>}</CopyButton>)}
          {item('Fleet topic', f.topic ? <Code>{short(f.topic, 24)}…</Code> : <Text c='dimmed'>-</Text>)}
          {item('DHT node', f.dht ? <Code>{f.dht.host}:{f.dht.port}</Code> : <Text c='dimmed'>not running</Text>)}
          {item('Allowed hosts', <Text fw={600}>{f.allow.length}</Text>)}
          {item('Bootstrap / direct peers', <Text size='sm'>{[...f.bootstrap, ...f.peers].join(', ') || '-'}</Text>)}
          {item('Upload limits', <Text size='sm'>{f.uploadLimit ? rate(f.uploadLimit) : 'none'} overall · {f.peerUploadLimit ? rate(f.peerUploadLimit) : 'none'} per peer</Text>)}
        </SimpleGrid>
      )}

      <Title order={3}>Peers</Title>
      {peers.data && !peers.data.length && <Text c='dimmed'>No peer connected.</Text>}
      {peers.data && peers.data.length > 0 && (
        <Table striped verticalSpacing='xs' data-testid='peers-table'>
          <Table.Thead>
            <Table.Tr><Table.Th>Host</Table.Th><Table.Th>Key</Table.Th><Table.Th>Address</Table.Th><Table.Th>Images</Table.Th><Table.Th>Partial</Table.Th><Table.Th>Received</Table.Th><Table.Th>Served</Table.Th><Table.Th>Receive rate</Table.Th><Table.Th>Connected</Table.Th></Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {peers.data.map(p => (
              <Table.Tr key={p.key}>
                <Table.Td fw={600}>{p.host}</Table.Td>
                <Table.Td><Tooltip label={p.key}><Code>{short(p.key)}</Code></Tooltip></Table.Td>
                <Table.Td>{p.address}</Table.Td>
                <Table.Td>{p.images}</Table.Td>
                <Table.Td>{p.partial}</Table.Td>
                <Table.Td>{bytes(p.bytesIn)}</Table.Td>
                <Table.Td>{bytes(p.bytesOut)}</Table.Td>
                <Table.Td><Badge variant='light' color={p.rateIn > 0 ? 'blue' : 'gray'}>{rate(p.rateIn)}</Badge></Table.Td>
                <Table.Td>{duration(p.connectedAt)}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}

      <Title order={3}>Transfers</Title>
      {!transfers.length && <Text c='dimmed'>No fetch running.</Text>}
      {transfers.map(j => (
        <Paper key={j.id} withBorder p='xs' onClick={() => navigate(`/jobs/${j.id}`)} style={{ cursor: 'pointer' }}>
          <Text size='sm' fw={600}>{j.target}</Text>
          <JobProgress job={j} />
        </Paper>
      ))}

      <Title order={3}>Advertised by peers</Title>
      {adverts.data && !adverts.data.length && <Text c='dimmed'>Peers advertise no image.</Text>}
      {adverts.data && adverts.data.length > 0 && (
        <Table verticalSpacing='xs' data-testid='adverts-table'>
          <Table.Thead><Table.Tr><Table.Th>Name</Table.Th><Table.Th>Labels</Table.Th><Table.Th>Size</Table.Th><Table.Th>Root</Table.Th><Table.Th>Held by</Table.Th><Table.Th /></Table.Tr></Table.Thead>
          <Table.Tbody>
            {adverts.data.map(a => (
              <Table.Tr key={a.root}>
                <Table.Td fw={600}>{a.name}</Table.Td>
                <Table.Td><Group gap={4}>{a.labels.map(l => <Badge key={l} variant='light' color='grape' size='sm' tt='none'>{l}</Badge>)}</Group></Table.Td>
                <Table.Td>{bytes(a.size)}</Table.Td>
                <Table.Td><Code>{short(a.root, 16)}</Code></Table.Td>
                <Table.Td><Group gap={4}>{a.holders.map(h => <Badge key={h.key} variant='outline' size='sm'>{h.host || short(h.key, 8)}</Badge>)}</Group></Table.Td>
                <Table.Td>
                  {local.has(a.root)
                    ? <Badge color='gray'>here</Badge>
                    : <Button size='compact-xs' onClick={() => fetchRoot(a.root, a.name)} disabled={!canWrite(session)}>Fetch</Button>}
                </Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
    </Stack>
  )
}
