// Package search against the chosen repository's own Packages index (package.search): the
// default mirror for the release, the spec's mirror, or one of its extra repositories.

import { useEffect, useMemo, useState } from 'react'
import { Alert, Button, Group, Loader, ScrollArea, Select, Stack, Table, Text, TextInput } from '@mantine/core'
import { useDebouncedValue } from '@mantine/hooks'
import type { PackageSearchResult } from '../../../protocol/rpc.ts'
import { call, RpcError } from '../rpc.ts'
import type { SpecForm } from './spec-model.ts'

interface Source { value: string, label: string, uri?: string, suite: string, components: string[] }

function sources (form: SpecForm): Source[] {
  const out: Source[] = []
  if (form.flavour !== 'rootfs') {
    out.push(form.mirror
      ? { value: 'mirror', label: `${form.mirror} ${form.release}`, uri: form.mirror, suite: form.release, components: ['main'] }
      : { value: 'mirror', label: `this host's mirror, ${form.release}`, suite: form.release, components: ['main'] })
  }
  form.repositories.forEach((r, i) => {
    const suites = r.suites.split(/[\s,]+/).filter(Boolean)
    const components = r.components.split(/[\s,]+/).filter(Boolean)
    if (r.uri && suites.length) out.push({ value: `repo:${i}`, label: `${r.uri} ${suites[0]}`, uri: r.uri, suite: suites[0]!, components: components.length ? components : ['main'] })
  })
  return out
}

export function PackageSearch ({ form, onAdd }: { form: SpecForm, onAdd: (name: string) => void }) {
  const options = useMemo(() => sources(form), [form])
  const [source, setSource] = useState('mirror')
  const [component, setComponent] = useState('main')
  const [query, setQuery] = useState('')
  const [debounced] = useDebouncedValue(query.trim(), 300)
  const [result, setResult] = useState<PackageSearchResult>()
  const [error, setError] = useState<RpcError>()
  const [busy, setBusy] = useState(false)

  const chosen = options.find(o => o.value === source) ?? options[0]
  useEffect(() => {
    if (chosen && !chosen.components.includes(component)) setComponent(chosen.components[0]!)
  }, [chosen, component])

  useEffect(() => {
    if (!chosen || !debounced || !chosen.suite) { setResult(undefined); setError(undefined); return }
    const abort = new AbortController()
    setBusy(true)
    call('package.search', { query: debounced, suite: chosen.suite, component, arch: form.arch || undefined, limit: 30, ...(chosen.uri ? { uri: chosen.uri } : {}) }, abort.signal)
      .then(r => { setResult(r); setError(undefined) }, err => { if (!abort.signal.aborted) { setError(err as RpcError); setResult(undefined) } })
      .finally(() => { if (!abort.signal.aborted) setBusy(false) })
    return () => abort.abort()
  }, [debounced, chosen?.uri, chosen?.suite, component, form.arch])

  if (!options.length) return <Text size='sm' c='dimmed'>The rootfs flavour installs packages with the image's own tool; add an apt repository to search one.</Text>
  return (
    <Stack gap='xs'>
      <Group grow align='flex-end'>
        <Select label='Search in' data={options.map(o => ({ value: o.value, label: o.label }))} value={chosen?.value ?? null} onChange={v => v && setSource(v)} allowDeselect={false} />
        <Select label='Component' data={chosen?.components ?? ['main']} value={component} onChange={v => v && setComponent(v)} allowDeselect={false} maw={160} />
      </Group>
      <TextInput label='Find a package' placeholder='name or words of its description' value={query} onChange={e => setQuery(e.currentTarget.value)}
        rightSection={busy ? <Loader size='xs' /> : null} data-testid='package-query' />
      {error && <Alert color='red' title={error.code}>{error.message}</Alert>}
      {result && (
        <>
          <Text size='xs' c='dimmed'>{result.matches} of {result.total} packages in {result.uri} {result.suite}/{result.component} ({result.arch}) match{result.matches > result.packages.length ? `; the first ${result.packages.length}` : ''}</Text>
          <ScrollArea.Autosize mah={260}>
            <Table verticalSpacing={4} data-testid='package-results'>
              <Table.Tbody>
                {result.packages.map(p => {
                  const added = form.packages.includes(p.name)
                  return (
                    <Table.Tr key={p.name}>
                      <Table.Td><Text size='sm' fw={600}>{p.name}</Text><Text size='xs' c='dimmed'>{p.version}</Text></Table.Td>
                      <Table.Td><Text size='sm'>{p.description}</Text><Text size='xs' c='dimmed'>{p.section} · {p.installedSize} KiB</Text></Table.Td>
                      <Table.Td><Button size='compact-xs' variant='light' disabled={added} onClick={() => onAdd(p.name)} data-testid={`add-${p.name}`}>{added ? 'added' : 'add'}</Button></Table.Td>
                    </Table.Tr>
                  )
                })}
              </Table.Tbody>
            </Table>
          </ScrollArea.Autosize>
        </>
      )}
    </Stack>
  )
}
