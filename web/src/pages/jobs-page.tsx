// Jobs: every build, fetch, import, export and verify, newest first, with live progress. One
// job's page follows it through job.watch (server-sent events): progress, rate and log lines,
// then its result (a build's layers with their cached marks, a fetch's transfer statistics).

import { useEffect, useRef, useState } from 'react'
import { Alert, Anchor, Badge, Button, Code, Group, Paper, ScrollArea, SimpleGrid, Stack, Table, Text, TextInput, Title } from '@mantine/core'
import { Link, useLocation } from 'wouter'
import type { BuildResultInfo, ExportResult, FetchResult, ImageInfo, JobInfo, VerifyResult } from '../../../protocol/rpc.ts'
import { call, stream, RpcError } from '../rpc.ts'
import { usePoll } from '../use-poll.ts'
import { bytes, duration, rate, short, when } from '../format.ts'
import { canWrite, useSession } from '../session.tsx'
import { JobProgress, RateMeter, stateColor } from '../components/job-progress.tsx'

const MAX_LOG_LINES = 500

export function JobsPage ({ jobId }: { jobId?: string }) {
  const jobs = usePoll(() => call('job.list', {}), 1000)
  const [, navigate] = useLocation()
  const list = [...(jobs.data ?? [])].reverse()
  return (
    <Stack>
      <Title order={2}>Jobs</Title>
      {jobId && <JobDetail key={jobId} id={jobId} onChange={jobs.reload} />}
      <FetchForm />
      {jobs.error && <Alert color='red' title={jobs.error.code}>{jobs.error.message}</Alert>}
      {jobs.data && !list.length && <Text c='dimmed'>No jobs yet.</Text>}
      {list.length > 0 && (
        <Table highlightOnHover verticalSpacing='xs' data-testid='jobs-table'>
          <Table.Thead>
            <Table.Tr><Table.Th>Job</Table.Th><Table.Th>Kind</Table.Th><Table.Th>Target</Table.Th><Table.Th w='35%'>Progress</Table.Th><Table.Th>Started</Table.Th><Table.Th>Took</Table.Th></Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {list.map(j => (
              <Table.Tr key={j.id} onClick={() => navigate(`/jobs/${j.id}`)} style={{ cursor: 'pointer' }} bg={j.id === jobId ? 'var(--mantine-color-teal-light)' : undefined} data-testid={`job-${j.id}`}>
                <Table.Td><Code>{j.id}</Code></Table.Td>
                <Table.Td><Badge variant='light'>{j.kind}</Badge></Table.Td>
                <Table.Td>{j.target}</Table.Td>
                <Table.Td><JobProgress job={j} size='sm' /></Table.Td>
                <Table.Td><Text size='sm'>{when(j.createdAt)}</Text></Table.Td>
                <Table.Td><Text size='sm'>{duration(j.createdAt, j.finishedAt)}</Text></Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
    </Stack>
  )
}

function JobDetail ({ id, onChange }: { id: string, onChange: () => void }) {
  const [job, setJob] = useState<JobInfo>()
  const [error, setError] = useState<RpcError>()
  const [log, setLog] = useState<string[]>([])
  const [speed, setSpeed] = useState<number>()
  const { session } = useSession()
  const viewport = useRef<HTMLDivElement>(null)

  useEffect(() => {
    const abort = new AbortController()
    const meter = new RateMeter()
    const follow = async () => {
      try {
        const first = await call('job.get', { id }, abort.signal)
        setJob(first)
        if (first.state !== 'running') return
        const end = await stream('job.watch', { id }, (method, params) => {
          if (method === 'job.progress') {
            const p = params as JobInfo
            setJob(p)
            if (p.progress.unit === 'bytes') setSpeed(meter.add(p.progress.done))
          } else if (method === 'job.log') {
            const line = (params as { line: string }).line
            setLog(l => (l.length >= MAX_LOG_LINES ? [...l.slice(-MAX_LOG_LINES + 1), line] : [...l, line]))
          }
        }, abort.signal)
        setJob(end)
        onChange()
      } catch (err) {
        if (!abort.signal.aborted) setError(err as RpcError)
      }
    }
    follow()
    return () => abort.abort()
  }, [id])

  useEffect(() => { viewport.current?.scrollTo({ top: viewport.current.scrollHeight }) }, [log.length])

  if (error) return <Alert color='red' title={error.code}>{error.message}</Alert>
  if (!job) return null
  return (
    <Paper withBorder p='md' data-testid='job-detail'>
      <Stack>
        <Group justify='space-between'>
          <Group gap='xs'>
            <Title order={4}>{job.kind} {job.target}</Title>
            <Badge color={stateColor(job.state)} data-testid='job-state'>{job.state}</Badge>
          </Group>
          <Group gap='xs'>
            <Text size='sm' c='dimmed'>{when(job.createdAt)} · {duration(job.createdAt, job.finishedAt)}</Text>
            {job.state === 'running' && <Button size='xs' color='red' variant='light' disabled={!canWrite(session)} onClick={() => call('job.cancel', { id }).catch(setError)}>Cancel</Button>}
          </Group>
        </Group>
        <JobProgress job={job} bytesPerSecond={speed} size='lg' />
        {job.error && <Alert color='red' title={job.error.code} data-testid='job-error'>{job.error.message}</Alert>}
        {job.state === 'done' && <JobResult job={job} />}
        {log.length > 0 && (
          <ScrollArea h={200} viewportRef={viewport} type='auto'>
            <Code block data-testid='job-log'>{log.join('\n')}</Code>
          </ScrollArea>
        )}
      </Stack>
    </Paper>
  )
}

function JobResult ({ job }: { job: JobInfo }) {
  const r = job.result
  if (job.kind === 'build') {
    const b = r as BuildResultInfo
    return (
      <Stack gap='xs' data-testid='build-result'>
        <Text size='sm'>Image <Anchor component={Link} href='/images' data-testid='built-image'>{b.image.name}</Anchor> ({bytes(b.image.size)}), key <Code>{short(b.key, 16)}</Code>{b.cached ? ', every layer from the cache' : ''}</Text>
        <Table verticalSpacing={2}>
          <Table.Tbody>
            {b.layers.map((l, i) => (
              <Table.Tr key={l.key}>
                <Table.Td w={30}>{i}</Table.Td>
                <Table.Td><Badge variant='light' size='sm'>{l.step}</Badge></Table.Td>
                <Table.Td><Code>{short(l.key, 16)}</Code></Table.Td>
                <Table.Td>{l.cached ? <Badge color='gray' size='sm'>cached</Badge> : <Text size='sm'>built in {l.seconds} s</Text>}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      </Stack>
    )
  }
  if (job.kind === 'fetch') {
    const f = r as FetchResult
    const s = f.stats
    if (!s) return <Text size='sm'>{f.alreadyPresent ? `${f.image.name} was already here.` : `Fetched ${f.image.name}.`}</Text>
    const stat = (label: string, value: string) => <Paper withBorder p='xs'><Text size='xs' c='dimmed'>{label}</Text><Text fw={600}>{value}</Text></Paper>
    return (
      <Stack gap='xs' data-testid='fetch-result'>
        <SimpleGrid cols={{ base: 2, md: 4 }}>
          {stat('reused in place', `${s.inPlace} blocks`)}
          {stat('copied locally', `${s.copiedLocal} blocks`)}
          {stat('received', `${s.received} blocks, ${bytes(s.rawBytes)}`)}
          {stat('on the wire', bytes(s.wireBytes + s.manifestBytes))}
          {stat('rate', rate(s.rate))}
          {stat('took', `${(s.elapsedMs / 1000).toFixed(1)} s`)}
          {stat('zero blocks', String(s.zeroBlocks))}
          {stat('bad blocks caught', String(s.badBlocks))}
        </SimpleGrid>
        {Object.keys(s.peers).length > 0 && (
          <Table verticalSpacing={2}>
            <Table.Thead><Table.Tr><Table.Th>From</Table.Th><Table.Th>Blocks</Table.Th><Table.Th>Raw</Table.Th><Table.Th>Wire</Table.Th></Table.Tr></Table.Thead>
            <Table.Tbody>
              {Object.entries(s.peers).map(([key, p]) => <Table.Tr key={key}><Table.Td>{p.host || short(key)}</Table.Td><Table.Td>{p.blocks}</Table.Td><Table.Td>{bytes(p.rawBytes)}</Table.Td><Table.Td>{bytes(p.wireBytes)}</Table.Td></Table.Tr>)}
            </Table.Tbody>
          </Table>
        )}
      </Stack>
    )
  }
  if (job.kind === 'export') { const e = r as ExportResult; return <Text size='sm'>Wrote {e.format} to <Code>{e.path}</Code> ({bytes(e.bytes)}).</Text> }
  if (job.kind === 'verify') { const v = r as VerifyResult; return <Text size='sm'>{v.ok ? `All ${v.blocks} blocks match the manifest.` : `${v.badBlocks.length} of ${v.blocks} blocks do not match.`}</Text> }
  if (job.kind === 'import') { const i = r as ImageInfo; return <Text size='sm'>Imported {i.name} ({bytes(i.size)}).</Text> }
  return null
}

function FetchForm () {
  const [ref, setRef] = useState('')
  const [from, setFrom] = useState('')
  const [error, setError] = useState<RpcError>()
  const [busy, setBusy] = useState(false)
  const { session } = useSession()
  const [, navigate] = useLocation()
  const fetchIt = async () => {
    setBusy(true)
    setError(undefined)
    try {
      const job = await call('image.fetch', { ref: ref.trim(), ...(from.trim() ? { from: from.trim() } : {}) })
      navigate(`/jobs/${job.id}`)
    } catch (err) {
      setError(err as RpcError)
    } finally {
      setBusy(false)
    }
  }
  return (
    <Paper withBorder p='sm'>
      <Group align='flex-end'>
        <TextInput label='Fetch from the fleet' placeholder='an image name peers advertise, or its content root' value={ref} onChange={e => setRef(e.currentTarget.value)} style={{ flex: 2 }}
          error={error && error.code !== 'FLEET_NOT_CONFIGURED' ? `${error.code}: ${error.message}` : undefined} />
        <TextInput label='Only from peer (optional)' placeholder='peer key' value={from} onChange={e => setFrom(e.currentTarget.value)} style={{ flex: 1 }} />
        <Button onClick={fetchIt} loading={busy} disabled={!ref.trim() || !canWrite(session)}>Fetch</Button>
      </Group>
      {error?.code === 'FLEET_NOT_CONFIGURED' && <Text size='sm' c='red' mt='xs'>No fleet is configured on this host: <Code>osfarmctl fleet init</Code> first.</Text>}
    </Paper>
  )
}
