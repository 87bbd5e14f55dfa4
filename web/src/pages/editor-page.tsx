// The spec editor: a form for every part of a spec, the XML or JSON it will submit beside it,
// and the daemon's verdict: `Check` plans the layers (which are cached already), `Build` starts
// the job. The daemon is the only validator; its issues appear next to the fields they name.

import { useMemo, useState, type ReactNode } from 'react'
import {
  ActionIcon, Alert, Autocomplete, Badge, Button, Chip, Code, CopyButton, Fieldset, Grid, Group, List, Menu, Paper, ScrollArea,
  SegmentedControl, Select, Stack, Switch, Tabs, TagsInput, Text, TextInput, Textarea, Title
} from '@mantine/core'
import { useLocation } from 'wouter'
import type { SpecCheckResult } from '../../../protocol/rpc.ts'
import { call, RpcError, type SpecIssue } from '../rpc.ts'
import { short } from '../format.ts'
import { canWrite, useSession } from '../session.tsx'
import { PackageSearch } from '../spec/package-search.tsx'
import {
  ARCHES, FLAVOURS, FieldErrors, RELEASES, VARIANTS, emptyForm, render,
  type FileForm, type Flavour, type RepositoryForm, type ScriptForm, type SpecForm, type SpecFormat
} from '../spec/spec-model.ts'

const EXAMPLES: Array<{ label: string, form: () => SpecForm }> = [
  // Debian 13 (trixie) is the current stable release, and the editor's default.
  { label: 'Debian trixie, minbase', form: () => ({ ...emptyForm(), name: 'trixie-minbase' }) },
  { label: 'trixie + OpenSSH server', form: () => ({ ...emptyForm(), name: 'trixie-ssh', packages: ['openssh-server'], labels: ['role=ssh'] }) },
  { label: 'Debian bookworm, minbase', form: () => ({ ...emptyForm(), release: 'bookworm', name: 'bookworm-minbase' }) },
  { label: 'bookworm + OpenSSH server', form: () => ({ ...emptyForm(), release: 'bookworm', name: 'bookworm-ssh', packages: ['openssh-server'], labels: ['role=ssh'] }) },
  {
    label: 'bookworm with files and a script',
    form: () => ({
      ...emptyForm(),
      release: 'bookworm',
      name: 'bookworm-files',
      files: [
        { path: '/etc/motd', mode: '0644', owner: 'root:root', content: 'Built by osfarm.\n' },
        { path: '/usr/local/bin/hello', mode: '0755', owner: '', content: '#!/bin/sh\necho hello from osfarm\n' }
      ],
      scripts: [{ name: 'check-hello', content: '/usr/local/bin/hello\n' }]
    })
  }
]

// Codes that concern one field although the daemon does not name it.
const CODE_FIELDS: Record<string, string> = { NAME_IN_USE: 'name' }

export function EditorPage () {
  const [form, setForm] = useState<SpecForm>(() => EXAMPLES[0]!.form())
  const [format, setFormat] = useState<SpecFormat>('xml')
  const [tab, setTab] = useState<string | null>('xml')
  const [issues, setIssues] = useState<SpecIssue[]>([])
  const [failure, setFailure] = useState<RpcError>()
  const [plan, setPlan] = useState<SpecCheckResult>()
  const [busy, setBusy] = useState<'check' | 'build'>()
  const { session } = useSession()
  const [, navigate] = useLocation()

  const text = useMemo(() => render(form, format), [form, format])
  const errors = useMemo(() => new FieldErrors(issues), [issues])
  const set = (patch: Partial<SpecForm>) => { setForm(f => ({ ...f, ...patch })); setPlan(undefined) }

  const submit = async (what: 'check' | 'build') => {
    setBusy(what)
    setFailure(undefined)
    setPlan(undefined)
    try {
      if (what === 'check') {
        setPlan(await call('spec.check', { spec: text, format }))
        setIssues([])
      } else {
        const job = await call('image.build', { spec: text, format })
        setIssues([])
        navigate(`/jobs/${job.id}`)
      }
    } catch (err) {
      const e = err instanceof RpcError ? err : new RpcError('INTERNAL', String(err))
      const named = e.issues.length ? e.issues : CODE_FIELDS[e.code] ? [{ field: CODE_FIELDS[e.code]!, message: e.message }] : []
      setIssues(named)
      if (!named.length || e.code !== 'SPEC_INVALID') setFailure(e)
    } finally {
      setBusy(undefined)
    }
  }

  const issueLines = new Set(format === tab ? issues.map(i => i.line).filter((l): l is number => l !== undefined) : [])

  return (
    <Stack>
      <Group justify='space-between'>
        <Title order={2}>Spec editor</Title>
        <Menu>
          <Menu.Target><Button variant='default'>Start from…</Button></Menu.Target>
          <Menu.Dropdown>
            {EXAMPLES.map(x => <Menu.Item key={x.label} onClick={() => { setForm(x.form()); setIssues([]); setPlan(undefined); setFailure(undefined) }}>{x.label}</Menu.Item>)}
            <Menu.Item onClick={() => { setForm(emptyForm()); setIssues([]); setPlan(undefined) }}>Empty</Menu.Item>
          </Menu.Dropdown>
        </Menu>
      </Group>
      <Grid gutter='lg'>
        <Grid.Col span={{ base: 12, lg: 7 }}>
          <Stack>
            <ImageFields form={form} set={set} errors={errors} />
            <Repositories form={form} set={set} errors={errors} />
            <Fieldset legend='Packages'>
              <Stack>
                <TagsInput label='Installed with the package tool' placeholder='type a name and press Enter, or add from the search below' value={form.packages}
                  onChange={v => set({ packages: v })} error={errors.for(['packages'], true)} clearable data-testid='packages-input' />
                <PackageSearch form={form} onAdd={name => set({ packages: [...form.packages, name] })} />
              </Stack>
            </Fieldset>
            <Files form={form} set={set} errors={errors} />
            <Scripts form={form} set={set} errors={errors} />
          </Stack>
        </Grid.Col>
        <Grid.Col span={{ base: 12, lg: 5 }}>
          <Stack style={{ position: 'sticky', top: 72 }}>
            <Paper withBorder p='sm'>
              <Stack gap='xs'>
                <Group justify='space-between'>
                  <Group gap='xs'>
                    <Text size='sm' fw={600}>Submit as</Text>
                    <SegmentedControl size='xs' data={[{ value: 'xml', label: 'XML' }, { value: 'json', label: 'JSON' }]} value={format}
                      onChange={v => { setFormat(v as SpecFormat); setTab(v) }} data-testid='format' />
                  </Group>
                  <Group gap='xs'>
                    <Button variant='default' onClick={() => submit('check')} loading={busy === 'check'} disabled={!canWrite(session)} data-testid='check'>Check</Button>
                    <Button onClick={() => submit('build')} loading={busy === 'build'} disabled={!canWrite(session)} data-testid='build'>Build</Button>
                  </Group>
                </Group>
                {issues.length > 0 && (
                  <Alert color='red' title={`The daemon found ${issues.length} problem${issues.length > 1 ? 's' : ''} in this spec`} data-testid='spec-issues'>
                    <List size='sm'>{issues.map((i, n) => <List.Item key={n}><Code>{i.field}</Code>{i.line !== undefined ? ` (line ${i.line})` : ''}: {i.message}</List.Item>)}</List>
                  </Alert>
                )}
                {failure && <Alert color='red' title={failure.code} data-testid='spec-failure'>{failure.message}</Alert>}
                {plan && (
                  <Alert color='teal' title={`${plan.name}: ${plan.layers.length} layer${plan.layers.length > 1 ? 's' : ''}, ${plan.layers.filter(l => l.cached).length} already built`} data-testid='spec-plan'>
                    <Stack gap={2}>
                      {plan.layers.map(l => <Group key={l.key} gap='xs'><Badge size='sm' variant='light' w={80}>{l.step}</Badge><Code>{short(l.key, 16)}</Code>{l.cached && <Badge size='sm' color='gray'>cached</Badge>}</Group>)}
                    </Stack>
                  </Alert>
                )}
              </Stack>
            </Paper>
            <Paper withBorder>
              <Tabs value={tab} onChange={setTab}>
                <Tabs.List>
                  <Tabs.Tab value='xml'>XML {format === 'xml' && <Badge size='xs' ml={4}>submitted</Badge>}</Tabs.Tab>
                  <Tabs.Tab value='json'>JSON {format === 'json' && <Badge size='xs' ml={4}>submitted</Badge>}</Tabs.Tab>
                  <Group ml='auto' pr='xs'>
                    <CopyButton value={render(form, (tab as SpecFormat) ?? 'xml')}>{({ copied, copy }) => <Button size='compact-xs' variant='subtle' onClick={copy}>{copied ? 'copied' : 'copy'}</Button>}</CopyButton>
                  </Group>
                </Tabs.List>
                <ScrollArea.Autosize mah='70vh'>
                  <Preview text={render(form, (tab as SpecFormat) ?? 'xml')} marked={issueLines} />
                </ScrollArea.Autosize>
              </Tabs>
            </Paper>
          </Stack>
        </Grid.Col>
      </Grid>
    </Stack>
  )
}

function Preview ({ text, marked }: { text: string, marked: Set<number> }) {
  const lines = text.replace(/\n$/, '').split('\n')
  return (
    <pre data-testid='spec-preview' style={{ margin: 0, padding: '8px 0', fontSize: 12, fontFamily: 'var(--mantine-font-family-monospace)' }}>
      {lines.map((l, i) => (
        <div key={i} style={{ display: 'flex', background: marked.has(i + 1) ? 'var(--mantine-color-red-1)' : undefined }}>
          <span style={{ width: 36, flex: 'none', textAlign: 'right', paddingRight: 8, color: 'var(--mantine-color-dimmed)', userSelect: 'none' }}>{i + 1}</span>
          <span style={{ whiteSpace: 'pre-wrap', wordBreak: 'break-all' }}>{l}</span>
        </div>
      ))}
    </pre>
  )
}

interface SectionProps {
  form: SpecForm
  set: (patch: Partial<SpecForm>) => void
  errors: FieldErrors
}

function ImageFields ({ form, set, errors }: SectionProps) {
  return (
    <Fieldset legend='Image'>
      <Grid>
        <Grid.Col span={6}><TextInput label='Name' required value={form.name} onChange={e => set({ name: e.currentTarget.value })} error={errors.for(['name'])} data-testid='spec-name' /></Grid.Col>
        <Grid.Col span={6}>
          <Select label='Flavour' data={FLAVOURS} value={form.flavour} allowDeselect={false} error={errors.for(['flavour'])}
            onChange={v => { const flavour = (v ?? 'debian') as Flavour; set({ flavour, release: RELEASES[flavour][0] ?? '' }) }} />
        </Grid.Col>
        {form.flavour !== 'rootfs' && (
          <>
            <Grid.Col span={4}><Autocomplete label='Release' data={RELEASES[form.flavour]} value={form.release} onChange={release => set({ release })} error={errors.for(['release'])} data-testid='spec-release' /></Grid.Col>
            <Grid.Col span={4}><Select label='Variant' data={VARIANTS} value={form.variant} onChange={v => set({ variant: v ?? 'minbase' })} allowDeselect={false} error={errors.for(['variant'])} /></Grid.Col>
          </>
        )}
        <Grid.Col span={4}><Select label='Architecture' data={ARCHES} value={form.arch} onChange={v => set({ arch: v ?? 'amd64' })} allowDeselect={false} error={errors.for(['arch'])} /></Grid.Col>
        {form.flavour === 'rootfs'
          ? <Grid.Col span={8}><TextInput label='Root filesystem tarball' description='a path on the daemon’s host' value={form.rootfs} onChange={e => set({ rootfs: e.currentTarget.value })} error={errors.for(['rootfs'])} /></Grid.Col>
          : (
            <Grid.Col span={12}>
              <TextInput label='Mirror' description={form.flavour === 'ubuntu' ? 'required for Ubuntu, e.g. http://archive.ubuntu.com/ubuntu' : 'empty: the mirror this host’s apt uses'}
                value={form.mirror} onChange={e => set({ mirror: e.currentTarget.value })} error={errors.for(['mirror'])} />
            </Grid.Col>
            )}
        <Grid.Col span={4}><TextInput label='Size' description='e.g. 2G, 512M' value={form.size} onChange={e => set({ size: e.currentTarget.value })} error={errors.for(['size', 'filesystem'])} data-testid='spec-size' /></Grid.Col>
        <Grid.Col span={4}>
          <Stack gap={4}>
            <Text size='sm' fw={500}>Outputs</Text>
            <Chip.Group multiple value={form.outputs} onChange={outputs => set({ outputs })}>
              <Group gap='xs'><Chip value='raw' size='xs'>raw</Chip><Chip value='qcow2' size='xs'>qcow2</Chip></Group>
            </Chip.Group>
            {errors.for(['outputs'], true) && <Text size='xs' c='red'>{errors.for(['outputs'], true)}</Text>}
          </Stack>
        </Grid.Col>
        <Grid.Col span={4}>
          <Switch mt='lg' label='Bootable' description='kernel, init, direct kernel boot' checked={form.bootable} onChange={e => set({ bootable: e.currentTarget.checked })} error={errors.for(['bootable'])} />
        </Grid.Col>
        <Grid.Col span={12}>
          <TagsInput label='Labels' description='key=value; seed policies select images by them' placeholder='e.g. channel=stable, then Enter' value={form.labels}
            onChange={labels => set({ labels })} error={errors.for(['labels'], true)} clearable data-testid='labels-input' />
        </Grid.Col>
      </Grid>
    </Fieldset>
  )
}

// A list of entries in a fieldset: each with a remove button, and one button to add another.
function ListSection<T> ({ legend, items, onChange, blank, addLabel, children }: {
  legend: string
  items: T[]
  onChange: (items: T[]) => void
  blank: () => T
  addLabel: string
  children: (item: T, i: number, update: (patch: Partial<T>) => void) => ReactNode
}) {
  return (
    <Fieldset legend={legend}>
      <Stack>
        {items.map((item, i) => (
          <Paper key={i} withBorder p='xs'>
            <Group align='flex-start' wrap='nowrap'>
              <Stack gap='xs' style={{ flex: 1 }}>{children(item, i, patch => onChange(items.map((x, j) => (j === i ? { ...x, ...patch } : x))))}</Stack>
              <ActionIcon variant='subtle' color='red' aria-label={`remove ${legend.toLowerCase()} ${i + 1}`} onClick={() => onChange(items.filter((_, j) => j !== i))}>✕</ActionIcon>
            </Group>
          </Paper>
        ))}
        <Group><Button size='xs' variant='light' onClick={() => onChange([...items, blank()])}>{addLabel}</Button></Group>
      </Stack>
    </Fieldset>
  )
}

function Repositories ({ form, set, errors }: SectionProps) {
  return (
    <ListSection<RepositoryForm> legend='Repositories' items={form.repositories} onChange={repositories => set({ repositories })}
      blank={() => ({ uri: '', suites: form.release, components: 'main', key: '' })} addLabel='Add an apt repository'>
      {(r, i, update) => {
        const f = `repositories[${i}]`
        return (
          <>
            <TextInput label='URI' placeholder='https://…' value={r.uri} onChange={e => update({ uri: e.currentTarget.value })} error={errors.for([`${f}.uri`, f])} />
            <Group grow>
              <TextInput label='Suites' value={r.suites} onChange={e => update({ suites: e.currentTarget.value })} error={errors.for([`${f}.suites`], true)} />
              <TextInput label='Components' value={r.components} onChange={e => update({ components: e.currentTarget.value })} error={errors.for([`${f}.components`], true)} />
            </Group>
            <Textarea label='Signing key' description='ASCII-armored OpenPGP public key (optional)' autosize minRows={1} maxRows={6} value={r.key}
              onChange={e => update({ key: e.currentTarget.value })} error={errors.for([`${f}.key`])} styles={{ input: { fontFamily: 'var(--mantine-font-family-monospace)' } }} />
          </>
        )
      }}
    </ListSection>
  )
}

function Files ({ form, set, errors }: SectionProps) {
  return (
    <ListSection<FileForm> legend='Files' items={form.files} onChange={files => set({ files })}
      blank={() => ({ path: '', mode: '0644', owner: 'root:root', content: '' })} addLabel='Add a file'>
      {(x, i, update) => {
        const f = `files[${i}]`
        return (
          <>
            <Group grow align='flex-start'>
              <TextInput label='Path in the image' placeholder='/etc/motd' value={x.path} onChange={e => update({ path: e.currentTarget.value })} error={errors.for([`${f}.path`])} data-testid={`file-${i}-path`} />
              <TextInput label='Mode' value={x.mode} onChange={e => update({ mode: e.currentTarget.value })} error={errors.for([`${f}.mode`])} maw={110} />
              <TextInput label='Owner' placeholder='root:root' value={x.owner} onChange={e => update({ owner: e.currentTarget.value })} error={errors.for([`${f}.owner`])} maw={160} />
            </Group>
            <Textarea label='Content' autosize minRows={2} maxRows={12} value={x.content} onChange={e => update({ content: e.currentTarget.value })}
              error={errors.for([`${f}.content`, f, `${f}.encoding`, `${f}.source`])} styles={{ input: { fontFamily: 'var(--mantine-font-family-monospace)' } }} data-testid={`file-${i}-content`} />
          </>
        )
      }}
    </ListSection>
  )
}

function Scripts ({ form, set, errors }: SectionProps) {
  return (
    <ListSection<ScriptForm> legend='Scripts' items={form.scripts} onChange={scripts => set({ scripts })}
      blank={() => ({ name: `script-${form.scripts.length + 1}`, content: '' })} addLabel='Add a script'>
      {(s, i, update) => {
        const f = `scripts[${i}]`
        return (
          <>
            <TextInput label='Name' value={s.name} onChange={e => update({ name: e.currentTarget.value })} error={errors.for([`${f}.name`])} />
            <Textarea label='Runs with /bin/sh -e in the image' autosize minRows={2} maxRows={12} value={s.content} onChange={e => update({ content: e.currentTarget.value })}
              error={errors.for([`${f}.content`, f])} styles={{ input: { fontFamily: 'var(--mantine-font-family-monospace)' } }} data-testid={`script-${i}-content`} />
          </>
        )
      }}
    </ListSection>
  )
}
