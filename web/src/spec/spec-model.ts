// The editor's form and the spec it submits. Lists keep the form's order and never drop an
// entry, so a field the daemon names (`files[1].path`) is the second file's path input here.
// The XML follows daemon/builder/xml-spec.ts: attributes and child elements are both fields, a
// list holds its singular items, an element's text beside attributes is its `content`.

export type Flavour = 'debian' | 'ubuntu' | 'rootfs'
export type SpecFormat = 'xml' | 'json'

export interface RepositoryForm { uri: string, suites: string, components: string, key: string }
export interface FileForm { path: string, mode: string, owner: string, content: string }
export interface ScriptForm { name: string, content: string }

export interface SpecForm {
  name: string
  flavour: Flavour
  release: string
  arch: string
  variant: string
  size: string
  mirror: string
  rootfs: string
  bootable: boolean
  outputs: string[]
  repositories: RepositoryForm[]
  packages: string[]
  files: FileForm[]
  scripts: ScriptForm[]
  labels: string[]
}

export const FLAVOURS: Array<{ value: Flavour, label: string }> = [
  { value: 'debian', label: 'Debian (mmdebstrap)' },
  { value: 'ubuntu', label: 'Ubuntu (mmdebstrap, mirror required)' },
  { value: 'rootfs', label: 'rootfs tarball (any distribution)' }
]

export const RELEASES: Record<Flavour, string[]> = {
  debian: ['trixie', 'bookworm', 'bullseye', 'sid'],
  ubuntu: ['noble', 'jammy', 'focal'],
  rootfs: []
}

export const VARIANTS = ['minbase', 'buildd', 'required', 'important', 'standard']
export const ARCHES = ['amd64', 'arm64', 'i386', 'armhf', 'ppc64el', 's390x', 'riscv64']

export function emptyForm (): SpecForm {
  return {
    name: '',
    flavour: 'debian',
    release: 'trixie',
    arch: 'amd64',
    variant: 'minbase',
    size: '2G',
    mirror: '',
    rootfs: '',
    bootable: false,
    outputs: ['raw'],
    repositories: [],
    packages: [],
    files: [],
    scripts: [],
    labels: []
  }
}

const words = (s: string) => s.split(/[\s,]+/).filter(Boolean)

// The spec as the daemon's JSON reader takes it; empty optional fields are left out.
export function toSpecObject (f: SpecForm): Record<string, unknown> {
  const o: Record<string, unknown> = { name: f.name }
  o.flavour = f.flavour
  if (f.release) o.release = f.release
  if (f.arch) o.arch = f.arch
  if (f.variant) o.variant = f.variant
  if (f.size) o.size = f.size
  if (f.mirror) o.mirror = f.mirror
  if (f.flavour === 'rootfs' && f.rootfs) o.rootfs = f.rootfs
  if (f.repositories.length) {
    o.repositories = f.repositories.map(r => ({
      uri: r.uri,
      suites: words(r.suites),
      ...(r.components.trim() ? { components: words(r.components) } : {}),
      ...(r.key.trim() ? { key: r.key } : {})
    }))
  }
  if (f.packages.length) o.packages = [...f.packages]
  if (f.files.length) {
    o.files = f.files.map(x => ({ path: x.path, ...(x.mode ? { mode: x.mode } : {}), ...(x.owner ? { owner: x.owner } : {}), content: x.content }))
  }
  if (f.scripts.length) o.scripts = f.scripts.map(s => ({ ...(s.name ? { name: s.name } : {}), content: s.content }))
  if (f.bootable) o.bootable = true
  if (f.outputs.length) o.outputs = [...f.outputs]
  if (f.labels.length) o.labels = [...f.labels]
  return o
}

export function toJson (f: SpecForm): string {
  return JSON.stringify(toSpecObject(f), null, 2) + '\n'
}

export function toXml (f: SpecForm): string {
  const o = toSpecObject(f)
  const out = ['<?xml version="1.0" encoding="UTF-8"?>', `<image name="${attr(f.name)}">`]
  const el = (name: string, value: string, indent = '  ') => out.push(`${indent}<${name}>${text(value)}</${name}>`)
  const list = (container: string, item: string, values: string[], indent = '  ') => {
    out.push(`${indent}<${container}>`)
    for (const v of values) el(item, v, indent + '  ')
    out.push(`${indent}</${container}>`)
  }
  for (const k of ['flavour', 'release', 'arch', 'variant', 'size', 'mirror', 'rootfs'] as const) {
    if (typeof o[k] === 'string') el(k, o[k] as string)
  }
  if (f.bootable) el('bootable', 'true')
  if (f.repositories.length) {
    out.push('  <repositories>')
    for (const r of o.repositories as Array<{ uri: string, suites: string[], components?: string[], key?: string }>) {
      out.push(`    <repository uri="${attr(r.uri)}">`)
      list('suites', 'suite', r.suites, '      ')
      if (r.components) list('components', 'component', r.components, '      ')
      if (r.key) out.push(`      <key>${text(r.key)}</key>`)
      out.push('    </repository>')
    }
    out.push('  </repositories>')
  }
  if (f.packages.length) list('packages', 'package', f.packages)
  if (f.files.length) {
    out.push('  <files>')
    for (const x of f.files) {
      const attrs = [`path="${attr(x.path)}"`, x.mode ? `mode="${attr(x.mode)}"` : '', x.owner ? `owner="${attr(x.owner)}"` : ''].filter(Boolean).join(' ')
      out.push(`    <file ${attrs}>${text(x.content)}</file>`)
    }
    out.push('  </files>')
  }
  if (f.scripts.length) {
    out.push('  <scripts>')
    for (const s of f.scripts) out.push(`    <script${s.name ? ` name="${attr(s.name)}"` : ''}>${text(s.content)}</script>`)
    out.push('  </scripts>')
  }
  if (f.outputs.length) list('outputs', 'output', f.outputs)
  if (f.labels.length) list('labels', 'label', f.labels)
  out.push('</image>')
  return out.join('\n') + '\n'
}

function text (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

function attr (s: string): string {
  return text(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;').replace(/\t/g, '&#9;')
}

export function render (f: SpecForm, format: SpecFormat): string {
  return format === 'xml' ? toXml(f) : toJson(f)
}

// The daemon's issues by field, for the inputs: `messagesFor('files[0].path')` and, with
// `nested`, also what it says about the parts of a field (`packages` → `packages[2]`).
export class FieldErrors {
  readonly #issues: Array<{ field: string, message: string }>

  constructor (issues: Array<{ field: string, message: string }> = []) {
    this.#issues = issues
  }

  get size (): number { return this.#issues.length }

  for (fields: string[], nested = false): string | undefined {
    const hits = this.#issues.filter(i => fields.some(f => i.field === f || (nested && (i.field.startsWith(f + '[') || i.field.startsWith(f + '.')))))
    if (!hits.length) return undefined
    return hits.map(i => (i.field === fields[0] ? i.message : `${i.field}: ${i.message}`)).join('; ')
  }
}
