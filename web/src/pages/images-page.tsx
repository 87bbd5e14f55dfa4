// The image repository: every image this daemon holds, its layers and content root, which fleet
// hosts hold the same root, and download links (raw streams the volume, qcow2 is converted).

import { useMemo, useState } from 'react'
import { ActionIcon, Alert, Anchor, Badge, Button, Code, CopyButton, Group, Menu, Modal, Stack, Table, TagsInput, Text, Title, Tooltip } from '@mantine/core'
import { useLocation } from 'wouter'
import type { FleetImage, ImageInfo } from '../../../protocol/rpc.ts'
import { call, downloadUrl, RpcError } from '../rpc.ts'
import { usePoll } from '../use-poll.ts'
import { bytes, short, when } from '../format.ts'
import { canWrite, useSession } from '../session.tsx'

const ORIGIN_COLOR: Record<ImageInfo['origin'], string> = { build: 'teal', import: 'gray', fetch: 'blue' }

export function ImagesPage () {
  const images = usePoll(() => call('image.list', {}), 3000)
  const fleet = usePoll(() => call('fleet.images', {}), 5000)
  // Versions behind their repositories (one small request per suite, cached by the daemon) and
  // the rebuild policies that keep images up to date.
  const outdated = usePoll(() => call('image.outdated', {}), 30000)
  const rebuilds = usePoll(() => call('rebuild.list', {}), 10000)
  const { session } = useSession()
  const [, navigate] = useLocation()
  const [layersOf, setLayersOf] = useState<ImageInfo>()
  const [confirm, setConfirm] = useState<ImageInfo>()
  const [relabel, setRelabel] = useState<{ image: ImageInfo, labels: string[] }>()
  const [problem, setProblem] = useState<RpcError>()

  const holders = useMemo(() => {
    const m = new Map<string, FleetImage['holders']>()
    for (const f of fleet.data ?? []) m.set(f.root, f.holders)
    return m
  }, [fleet.data])

  const act = async (fn: () => Promise<unknown>) => {
    setProblem(undefined)
    try { await fn() } catch (err) { setProblem(err as RpcError) }
    images.reload()
  }

  const list = [...(images.data ?? [])].reverse()
  return (
    <Stack>
      <Group justify='space-between'>
        <Title order={2}>Image repository</Title>
        <Button variant='light' onClick={() => navigate('/editor')} disabled={!canWrite(session)}>New image</Button>
      </Group>
      {images.error && <Alert color='red' title={images.error.code}>{images.error.message}</Alert>}
      {problem && <Alert color='red' title={problem.code} withCloseButton onClose={() => setProblem(undefined)}>{problem.message}</Alert>}
      {images.data && !list.length && <Text c='dimmed'>No images yet: build one in the spec editor, import one with <Code>osfarmctl image import</Code> or fetch one from the fleet.</Text>}
      {list.length > 0 && (
        <Table striped highlightOnHover verticalSpacing='xs' data-testid='images-table'>
          <Table.Thead>
            <Table.Tr>
              <Table.Th>Name</Table.Th>
              <Table.Th>Origin</Table.Th>
              <Table.Th>Size</Table.Th>
              <Table.Th>Data</Table.Th>
              <Table.Th>Layers</Table.Th>
              <Table.Th>Labels</Table.Th>
              <Table.Th>Content root</Table.Th>
              <Table.Th>Held by</Table.Th>
              <Table.Th>Created</Table.Th>
              <Table.Th>Download</Table.Th>
              <Table.Th />
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {list.map(i => {
              const peers = holders.get(i.root) ?? []
              return (
                <Table.Tr key={i.id} data-testid={`image-${i.name}`}>
                  <Table.Td>
                    <Group gap={6}>
                      <Text fw={600}>{i.name}</Text>
                      {i.version !== undefined && <Tooltip label={`${i.name}@${i.version}`}><Badge variant='outline' size='sm' data-testid='image-version'>v{i.version}</Badge></Tooltip>}
                      {outdated.data?.some(o => o.image.id === i.id && o.outdated) && <Tooltip label={`behind: ${outdated.data.find(o => o.image.id === i.id)!.changed.map(c => `${c.uri} ${c.suite}`).join(', ')}; a rebuild redoes ${outdated.data.find(o => o.image.id === i.id)!.rebuild.join(' > ')}`}><Badge color='orange' size='sm' data-testid='image-outdated'>outdated</Badge></Tooltip>}
                    </Group>
                    <Text size='xs' c='dimmed'>{short(i.id)}</Text>
                  </Table.Td>
                  <Table.Td><Badge color={ORIGIN_COLOR[i.origin]} variant='light'>{i.origin}</Badge></Table.Td>
                  <Table.Td>{bytes(i.size)}</Table.Td>
                  <Table.Td><Tooltip label={`${i.blocks - i.zeroBlocks} of ${i.blocks} blocks of ${i.blockSize} bytes hold data`}><span>{bytes((i.blocks - i.zeroBlocks) * i.blockSize)}</span></Tooltip></Table.Td>
                  <Table.Td>
                    {i.layers.length ? <Anchor component='button' size='sm' onClick={() => setLayersOf(i)}>{i.layers.length} layer{i.layers.length > 1 ? 's' : ''}</Anchor> : <Text size='sm' c='dimmed'>-</Text>}
                  </Table.Td>
                  <Table.Td data-testid='image-labels'>
                    {i.labels?.length ? <Group gap={4}>{i.labels.map(l => <Badge key={l} variant='light' color='grape' size='sm' tt='none'>{l}</Badge>)}</Group> : <Text size='sm' c='dimmed'>-</Text>}
                  </Table.Td>
                  <Table.Td>
                    <CopyButton value={i.root}>
                      {({ copied, copy }) => <Tooltip label={copied ? 'copied' : i.root}><Code style={{ cursor: 'pointer' }} onClick={copy} data-testid='image-root'>{short(i.root, 16)}</Code></Tooltip>}
                    </CopyButton>
                  </Table.Td>
                  <Table.Td>
                    <Group gap={4}>
                      <Badge variant='outline' color='gray' size='sm'>this host</Badge>
                      {peers.map(p => <Tooltip key={p.key} label={p.key}><Badge variant='outline' size='sm'>{p.host || short(p.key, 8)}</Badge></Tooltip>)}
                    </Group>
                  </Table.Td>
                  <Table.Td><Text size='sm'>{when(i.createdAt)}</Text></Table.Td>
                  <Table.Td>
                    <Group gap='xs' wrap='nowrap'>
                      <Anchor href={downloadUrl(i.id, 'raw')} download data-testid='download-raw'>raw</Anchor>
                      <Anchor href={downloadUrl(i.id, 'qcow2')} download data-testid='download-qcow2'>qcow2</Anchor>
                    </Group>
                  </Table.Td>
                  <Table.Td>
                    <Menu position='bottom-end' withinPortal>
                      <Menu.Target><ActionIcon variant='subtle' aria-label={`actions for ${i.name}`}>⋯</ActionIcon></Menu.Target>
                      <Menu.Dropdown>
                        <Menu.Item onClick={() => act(async () => { const j = await call('image.verify', { id: i.id }); navigate(`/jobs/${j.id}`) })}>Verify against its manifest</Menu.Item>
                        <Menu.Item disabled={!canWrite(session)} onClick={() => setRelabel({ image: i, labels: i.labels ?? [] })}>Change labels…</Menu.Item>
                        <Menu.Item color='red' disabled={!canWrite(session)} onClick={() => setConfirm(i)}>Remove…</Menu.Item>
                      </Menu.Dropdown>
                    </Menu>
                  </Table.Td>
                </Table.Tr>
              )
            })}
          </Table.Tbody>
        </Table>
      )}

      {(rebuilds.data?.length ?? 0) > 0 && (
        <Stack gap='xs' data-testid='rebuild-policies'>
          <Title order={3}>Rebuild policies</Title>
          <Table striped verticalSpacing='xs'>
            <Table.Thead><Table.Tr><Table.Th>Image</Table.Th><Table.Th>When</Table.Th><Table.Th>Last run</Table.Th><Table.Th>Result</Table.Th><Table.Th>Next</Table.Th></Table.Tr></Table.Thead>
            <Table.Tbody>
              {rebuilds.data!.map(p => (
                <Table.Tr key={p.id}>
                  <Table.Td><Text fw={600}>{p.name}</Text><Text size='xs' c='dimmed'>{p.id} ({p.rights})</Text></Table.Td>
                  <Table.Td>{[p.everySeconds !== null ? `every ${Math.round(p.everySeconds / 60)} min` : '', p.onChange ? 'on mirror change' : ''].filter(Boolean).join(', ')}</Table.Td>
                  <Table.Td>{p.lastRun ?? '-'}</Table.Td>
                  <Table.Td>{p.running ? <Badge color='blue'>running</Badge> : p.lastResult ?? '-'}</Table.Td>
                  <Table.Td>{p.nextRun ?? (p.onChange ? 'on change' : '-')}</Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </Stack>
      )}

      <Modal opened={!!layersOf} onClose={() => setLayersOf(undefined)} title={`Layers of ${layersOf?.name ?? ''}`} size='lg'>
        <Stack gap={4}>
          <Text size='sm' c='dimmed'>Bottom first; each layer's key is BLAKE3 of its parent's key and its step. The top layer's key is the image's.</Text>
          {layersOf?.layers.map((l, n) => <Group key={l} gap='xs'><Badge variant='light' w={28}>{n}</Badge><Code>{l}</Code></Group>)}
        </Stack>
      </Modal>

      <Modal opened={!!relabel} onClose={() => setRelabel(undefined)} title={`Labels of ${relabel?.image.name ?? ''}`} centered>
        <Stack>
          <Text size='sm'>Labels are signed into the image's advert: only the host that built it can change them, and the whole fleet hears the change.</Text>
          <TagsInput label='Labels' placeholder='key=value, then Enter' value={relabel?.labels ?? []} onChange={labels => setRelabel(r => r && { ...r, labels })} data-testid='relabel-input' />
          <Group justify='flex-end'>
            <Button variant='default' onClick={() => setRelabel(undefined)}>Cancel</Button>
            <Button data-testid='relabel-save' onClick={() => {
              const { image, labels } = relabel!
              setRelabel(undefined)
              const gone = (image.labels ?? []).filter(l => !labels.includes(l))
              act(() => call('image.label', { id: image.id, ...(labels.length ? { set: labels } : {}), ...(gone.length ? { remove: gone } : {}) }))
            }}>Save</Button>
          </Group>
        </Stack>
      </Modal>

      <Modal opened={!!confirm} onClose={() => setConfirm(undefined)} title={`Remove ${confirm?.name ?? ''}?`} centered>
        <Stack>
          <Text size='sm'>The image leaves the catalog; layers other images share stay.</Text>
          <Group justify='flex-end'>
            <Button variant='default' onClick={() => setConfirm(undefined)}>Keep</Button>
            <Button color='red' onClick={() => { const c = confirm!; setConfirm(undefined); act(() => call('image.remove', { id: c.id })) }}>Remove</Button>
          </Group>
        </Stack>
      </Modal>
    </Stack>
  )
}
