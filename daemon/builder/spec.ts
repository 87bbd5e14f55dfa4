// Image specs: XML (OS Farm style) and JSON parse into one typed ImageSpec. Validation collects
// every problem, each naming its field (and, for XML, its line), into one SPEC_INVALID error.

import path from 'node:path'
import { SPEC_INVALID } from '../../protocol/errors.js'
import { readXmlSpec, XmlSpecError, type Lines } from './xml-spec.js'
import { flavours } from './flavours/index.js'
import { labelProblem } from '../images/labels.js'
import { MAX_LABELS } from '../../protocol/wire.js'
import { MAX_SPEC_BYTES } from '../../protocol/rpc.js'

export type SpecFormat = 'xml' | 'json'
export type OutputFormat = 'raw' | 'qcow2'

export { MAX_SPEC_BYTES }
export const MIN_SIZE = 32 << 20
export const MAX_SIZE = 2 ** 40
export const DEFAULT_SIZE = 2 ** 31
const MAX_FILE_BYTES = 16 << 20
const MAX_PATH = 4095

export interface RepositorySpec {
  uri: string
  suites: string[]
  components: string[]
  // An ASCII-armored OpenPGP public key the repository is signed with.
  key?: string
}

export interface FileSpec {
  // Absolute path inside the image, normalised, without `.` or `..` components.
  path: string
  mode: number
  owner: string
  group: string
  // Exactly one of content (text, or base64 with encoding) and source (a host file, absolute).
  content?: string
  encoding: 'utf8' | 'base64'
  source?: string
  // Set once the source (or content) is a daemon-owned copy at `source` (builder/sources.ts).
  blob?: { blake3: string, size: number }
}

export interface ScriptSpec {
  name: string
  content: string
}

export interface ImageSpec {
  name: string
  flavour: string
  release: string
  arch: string
  variant: string
  mirror?: string
  components: string[]
  repositories: RepositorySpec[]
  packages: string[]
  files: FileSpec[]
  scripts: ScriptSpec[]
  size: number
  filesystem: 'ext4'
  outputs: OutputFormat[]
  bootable: boolean
  // The rootfs flavour's base: a tarball on this host (absolute path).
  rootfs?: string
  // "key=value" labels the built image is registered with: metadata, not in the plan's key.
  labels: string[]
  // Pins the repositories' states: "offline" (the newest this host saw, no network) or a point
  // in time (ISO 8601: the states this host saw then). Not in any key: the states are.
  snapshot?: string
}

export interface SpecIssue {
  field: string
  line?: number
  message: string
}

export interface ParseOptions {
  // Where relative `source` and `rootfs` paths are resolved from (the spec file's directory).
  baseDir?: string
}

const TOP_FIELDS = ['name', 'flavour', 'release', 'arch', 'variant', 'mirror', 'components', 'repositories', 'packages', 'files', 'scripts', 'size', 'filesystem', 'outputs', 'bootable', 'rootfs', 'labels', 'description', 'snapshot']
const FILE_FIELDS = ['path', 'mode', 'owner', 'content', 'encoding', 'source']
const SCRIPT_FIELDS = ['name', 'content']
const REPO_FIELDS = ['uri', 'suites', 'components', 'key']

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const TOKEN = /^[a-z0-9][a-z0-9.+~-]{0,63}$/
const SUITE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$/
const OWNER = /^(?:[a-z_][a-z0-9_-]{0,31}|\d{1,10})$/
const SCRIPT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const VARIANTS = ['minbase', 'buildd', 'required', 'important', 'standard']
const OUTPUTS: OutputFormat[] = ['raw', 'qcow2']

export function parseSpec (text: string, format: SpecFormat, options: ParseOptions = {}): ImageSpec {
  if (typeof text !== 'string') throw SPEC_INVALID('the spec must be text')
  if (Buffer.byteLength(text) > MAX_SPEC_BYTES) throw SPEC_INVALID(`the spec is larger than ${MAX_SPEC_BYTES} bytes`)
  let value: unknown
  let lines: Lines | undefined
  if (format === 'xml') {
    try {
      ({ value, lines } = readXmlSpec(text))
    } catch (err) {
      if (!(err instanceof XmlSpecError)) throw err
      throw invalid([{ field: err.field ?? '(document)', line: err.line, message: err.message }])
    }
  } else if (format === 'json') {
    try {
      value = JSON.parse(text)
    } catch (err) {
      throw invalid([{ field: '(document)', line: jsonErrorLine(text, (err as Error).message), message: `malformed JSON: ${(err as Error).message}` }])
    }
  } else {
    throw SPEC_INVALID(`unknown spec format ${JSON.stringify(format)} (xml or json)`)
  }
  return validateSpec(value, { ...options, lines, xml: format === 'xml' })
}

// Picks the format from a file name (.xml or .json), else from the first character.
export function detectFormat (text: string, fileName?: string): SpecFormat {
  if (fileName?.endsWith('.xml')) return 'xml'
  if (fileName?.endsWith('.json')) return 'json'
  return text.trimStart().startsWith('<') ? 'xml' : 'json'
}

interface ValidateOptions extends ParseOptions {
  lines?: Lines
  // XML gives every scalar as text: booleans and numbers are then read from it.
  xml?: boolean
}

export function validateSpec (value: unknown, options: ValidateOptions = {}): ImageSpec {
  const issues: SpecIssue[] = []
  const lines = options.lines
  const report = (field: string, message: string) => {
    issues.push({ field, line: lineOf(lines, field), message })
  }
  const baseDir = options.baseDir ?? process.cwd()

  if (!isObject(value)) throw invalid([{ field: '(document)', message: 'a spec must be an object' }])
  unknownFields(value, '', TOP_FIELDS, report)

  const str = (v: unknown, field: string, required: boolean): string | undefined => {
    if (v === undefined) {
      if (required) report(field, 'is required')
      return undefined
    }
    if (typeof v !== 'string') { report(field, 'must be a string'); return undefined }
    return v
  }
  const list = (v: unknown, field: string): unknown[] => {
    if (v === undefined) return []
    if (typeof v === 'string' && field.endsWith('components')) return v.split(/[\s,]+/).filter(Boolean)
    if (typeof v === 'string' && field.endsWith('suites')) return v.split(/[\s,]+/).filter(Boolean)
    if (!Array.isArray(v)) { report(field, 'must be a list'); return [] }
    return v
  }
  const pattern = (v: string | undefined, field: string, re: RegExp, what: string): string | undefined => {
    if (v === undefined) return undefined
    if (!re.test(v)) { report(field, `${JSON.stringify(v)} is not ${what}`); return undefined }
    return v
  }

  const name = pattern(str(value.name, 'name', true), 'name', NAME, 'a valid name (letters, digits, . _ -; up to 64)') ?? ''
  const flavourName = str(value.flavour, 'flavour', false) ?? 'debian'
  const flavour = flavours.get(flavourName)
  if (!flavour) report('flavour', `unknown flavour ${JSON.stringify(flavourName)} (one of ${[...flavours.keys()].join(', ')})`)
  const release = pattern(str(value.release, 'release', false), 'release', TOKEN, 'a valid release name') ?? ''
  const arch = pattern(str(value.arch, 'arch', false), 'arch', /^[a-z0-9]{1,16}$/, 'a valid architecture') ?? 'amd64'
  const variant = str(value.variant, 'variant', false) ?? 'minbase'
  if (!VARIANTS.includes(variant)) report('variant', `unknown variant ${JSON.stringify(variant)} (one of ${VARIANTS.join(', ')})`)
  const mirror = checkUri(str(value.mirror, 'mirror', false), 'mirror', report)
  const components = list(value.components, 'components').map((c, i) => pattern(str(c, `components[${i}]`, true), `components[${i}]`, TOKEN, 'a valid component')).filter(isString)

  const repositories: RepositorySpec[] = []
  list(value.repositories, 'repositories').forEach((r, i) => {
    const field = `repositories[${i}]`
    if (!isObject(r)) { report(field, 'must be an object'); return }
    unknownFields(r, field, REPO_FIELDS, report)
    const uri = checkUri(str(r.uri, `${field}.uri`, true), `${field}.uri`, report)
    const suites = list(r.suites, `${field}.suites`).map((s, j) => pattern(str(s, `${field}.suites[${j}]`, true), `${field}.suites[${j}]`, SUITE, 'a valid suite')).filter(isString)
    if (!suites.length) report(`${field}.suites`, 'needs at least one suite')
    const comps = list(r.components ?? ['main'], `${field}.components`).map((c, j) => pattern(str(c, `${field}.components[${j}]`, true), `${field}.components[${j}]`, TOKEN, 'a valid component')).filter(isString)
    const key = str(r.key, `${field}.key`, false)
    if (key !== undefined && !/-----BEGIN PGP PUBLIC KEY BLOCK-----[\s\S]+-----END PGP PUBLIC KEY BLOCK-----/.test(key)) {
      report(`${field}.key`, 'must be an ASCII-armored OpenPGP public key block')
    }
    if (uri) repositories.push({ uri, suites, components: comps, ...(key !== undefined ? { key: key.trim() + '\n' } : {}) })
  })

  const packageName = flavour?.packageName ?? /^$/
  const packages = list(value.packages, 'packages').map((p, i) => {
    const field = `packages[${i}]`
    const s = str(p, field, true)
    if (s === undefined) return undefined
    if (!packageName.test(s)) { report(field, `${JSON.stringify(s)} is not a valid package name`); return undefined }
    return s
  }).filter(isString)

  const files: FileSpec[] = []
  const seenPaths = new Set<string>()
  list(value.files, 'files').forEach((f, i) => {
    const field = `files[${i}]`
    if (!isObject(f)) { report(field, 'must be an object'); return }
    unknownFields(f, field, FILE_FIELDS, report)
    const p = checkImagePath(str(f.path, `${field}.path`, true), `${field}.path`, report)
    if (p && seenPaths.has(p)) report(`${field}.path`, `${p} is given more than once`)
    if (p) seenPaths.add(p)
    const mode = checkMode(f.mode, `${field}.mode`, report)
    const [owner, group] = checkOwner(str(f.owner, `${field}.owner`, false), `${field}.owner`, report)
    const content = str(f.content, `${field}.content`, false)
    const encoding = str(f.encoding, `${field}.encoding`, false) ?? 'utf8'
    if (encoding !== 'utf8' && encoding !== 'base64') report(`${field}.encoding`, 'must be utf8 or base64')
    if (encoding === 'base64' && content !== undefined && !/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(content)) report(`${field}.content`, 'is not base64')
    let source = str(f.source, `${field}.source`, false)
    if (content !== undefined && source !== undefined) report(field, 'has both content and source; give one')
    if (content === undefined && source === undefined && f.content === undefined) report(field, 'needs content or source')
    if (content !== undefined && Buffer.byteLength(content) > MAX_FILE_BYTES) report(`${field}.content`, `is larger than ${MAX_FILE_BYTES} bytes`)
    if (source !== undefined) source = path.resolve(baseDir, source)
    if (p) files.push({ path: p, mode: mode ?? 0o644, owner, group, encoding: encoding === 'base64' ? 'base64' : 'utf8', ...(content !== undefined ? { content } : {}), ...(source !== undefined ? { source } : {}) })
  })

  const scripts: ScriptSpec[] = []
  list(value.scripts, 'scripts').forEach((s, i) => {
    const field = `scripts[${i}]`
    const obj = typeof s === 'string' ? { content: s } : s
    if (!isObject(obj)) { report(field, 'must be a string or an object'); return }
    unknownFields(obj, field, SCRIPT_FIELDS, report)
    const sname = pattern(str(obj.name, `${field}.name`, false), `${field}.name`, SCRIPT_NAME, 'a valid script name') ?? `script-${i + 1}`
    const content = str(obj.content, `${field}.content`, true)
    if (content !== undefined && !content.trim()) report(`${field}.content`, 'is empty')
    if (content !== undefined) scripts.push({ name: sname, content })
  })

  const size = checkSize(value.size, 'size', report) ?? DEFAULT_SIZE
  const filesystem = str(value.filesystem, 'filesystem', false) ?? 'ext4'
  if (filesystem !== 'ext4') report('filesystem', `${JSON.stringify(filesystem)} is not supported (ext4)`)
  const outputs = list(value.outputs ?? ['raw'], 'outputs').map((o, i) => {
    const s = str(o, `outputs[${i}]`, true)
    if (s !== undefined && !OUTPUTS.includes(s as OutputFormat)) { report(`outputs[${i}]`, `unknown output ${JSON.stringify(s)} (raw or qcow2)`); return undefined }
    return s as OutputFormat | undefined
  }).filter(isString) as OutputFormat[]
  const bootable = checkBool(value.bootable, 'bootable', options.xml ?? false, report) ?? false
  let rootfs = str(value.rootfs, 'rootfs', false)
  if (rootfs !== undefined) rootfs = path.resolve(baseDir, rootfs)
  if (value.description !== undefined) str(value.description, 'description', false)
  const labels = list(value.labels, 'labels').map((l, i) => {
    const s = str(l, `labels[${i}]`, true)
    const problem = s === undefined ? undefined : labelProblem(s)
    if (problem) report(`labels[${i}]`, problem)
    return problem ? undefined : s
  }).filter(isString)
  if (labels.length > MAX_LABELS) report('labels', `at most ${MAX_LABELS} labels`)
  const snapshot = str(value.snapshot, 'snapshot', false)
  if (snapshot !== undefined && snapshotProblem(snapshot)) report('snapshot', snapshotProblem(snapshot)!)

  const spec: ImageSpec = {
    name,
    flavour: flavourName,
    release,
    arch,
    variant,
    ...(mirror !== undefined ? { mirror } : {}),
    components: components.length ? components : ['main'],
    repositories,
    packages,
    files,
    scripts,
    size,
    filesystem: 'ext4',
    outputs: [...new Set(outputs)],
    bootable,
    ...(rootfs !== undefined ? { rootfs } : {}),
    labels,
    ...(snapshot !== undefined && !snapshotProblem(snapshot) ? { snapshot: snapshot.trim() } : {})
  }
  flavour?.check(spec, report)
  if (issues.length) throw invalid(issues)
  return spec
}

// "offline", or an ISO 8601 date or time (a date alone is its end: 2025-05-20 is 23:59:59.999Z).
export function parseSnapshot (v: string): 'offline' | number | undefined {
  const s = v.trim()
  if (s === 'offline') return 'offline'
  if (/^\d{4}-\d{2}-\d{2}$/.test(s)) { const t = Date.parse(s + 'T23:59:59.999Z'); return Number.isNaN(t) ? undefined : t }
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(s)) return undefined
  const t = Date.parse(s)
  return Number.isNaN(t) ? undefined : t
}

export function snapshotProblem (v: string): string | undefined {
  return parseSnapshot(v) === undefined ? `${JSON.stringify(v)} is not "offline" or an ISO 8601 date or time (2025-05-20, 2025-05-20T12:00:00Z)` : undefined
}

function invalid (issues: SpecIssue[]) {
  const text = issues.map(i => `${i.field}${i.line !== undefined ? ` (line ${i.line})` : ''}: ${i.message}`).join('; ')
  return SPEC_INVALID(text, { issues })
}

function lineOf (lines: Lines | undefined, field: string): number | undefined {
  if (!lines) return undefined
  // The field itself, else the nearest enclosing element that has a line.
  for (let f = field; f; f = f.replace(/(\.[^.[\]]+|\[\d+\])$/, '')) {
    const line = lines.get(f)
    if (line !== undefined) return line
    if (!/(\.[^.[\]]+|\[\d+\])$/.test(f)) break
  }
  return lines.get('')
}

function unknownFields (obj: Record<string, unknown>, at: string, known: string[], report: (f: string, m: string) => void): void {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) report(at ? `${at}.${k}` : k, `unknown field (known: ${known.join(', ')})`)
  }
}

// A path inside the image: absolute, and normalised so it cannot climb out of the root.
function checkImagePath (p: string | undefined, field: string, report: (f: string, m: string) => void): string | undefined {
  if (p === undefined) return undefined
  if (p.includes('\0')) { report(field, 'contains a NUL byte'); return undefined }
  if (!p.startsWith('/')) { report(field, `${JSON.stringify(p)} must be absolute (a path inside the image)`); return undefined }
  if (p.length > MAX_PATH) { report(field, 'is too long'); return undefined }
  const parts = p.split('/').filter(Boolean)
  if (parts.some(c => c === '..')) { report(field, `${JSON.stringify(p)} contains '..' (it must stay inside the image)`); return undefined }
  if (parts.some(c => c === '.')) { report(field, `${JSON.stringify(p)} contains '.' components`); return undefined }
  if (!parts.length) { report(field, 'must name a file, not /'); return undefined }
  if (p.endsWith('/')) { report(field, `${JSON.stringify(p)} names a directory`); return undefined }
  return '/' + parts.join('/')
}

function checkMode (v: unknown, field: string, report: (f: string, m: string) => void): number | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0o7777) return v
  if (typeof v === 'string' && /^0?[0-7]{3,4}$/.test(v)) return parseInt(v, 8)
  report(field, 'must be an octal mode string such as "0644"')
  return undefined
}

function checkOwner (v: string | undefined, field: string, report: (f: string, m: string) => void): [string, string] {
  if (v === undefined) return ['root', 'root']
  const [user, group, extra] = v.split(':')
  if (extra !== undefined || !OWNER.test(user ?? '') || (group !== undefined && !OWNER.test(group))) {
    report(field, `${JSON.stringify(v)} is not user[:group] (names or numbers)`)
    return ['root', 'root']
  }
  return [user!, group ?? user!]
}

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }

function checkSize (v: unknown, field: string, report: (f: string, m: string) => void): number | undefined {
  if (v === undefined) return undefined
  let bytes: number | undefined
  if (typeof v === 'number' && Number.isSafeInteger(v)) bytes = v
  else if (typeof v === 'string') {
    const m = /^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(v)
    if (m) bytes = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!
  }
  if (bytes === undefined) { report(field, 'must be a size such as "2G", "512M" or a number of bytes'); return undefined }
  if (bytes < MIN_SIZE) { report(field, `must be at least ${MIN_SIZE >> 20} MiB`); return undefined }
  if (bytes > MAX_SIZE) { report(field, 'must be at most 1 TiB'); return undefined }
  if (bytes % 4096 !== 0) { report(field, 'must be a multiple of 4 KiB'); return undefined }
  return bytes
}

function checkBool (v: unknown, field: string, fromText: boolean, report: (f: string, m: string) => void): boolean | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'boolean') return v
  if (fromText && typeof v === 'string') {
    const s = v.trim().toLowerCase()
    if (['true', 'yes', '1'].includes(s)) return true
    if (['false', 'no', '0'].includes(s)) return false
  }
  report(field, 'must be true or false')
  return undefined
}

function checkUri (v: string | undefined, field: string, report: (f: string, m: string) => void): string | undefined {
  if (v === undefined) return undefined
  let url: URL
  try { url = new URL(v) } catch { report(field, `${JSON.stringify(v)} is not a URL`); return undefined }
  if (!['http:', 'https:', 'file:'].includes(url.protocol) || /[\s"'`\\]/.test(v)) {
    report(field, `${JSON.stringify(v)} must be an http, https or file URL`)
    return undefined
  }
  return v.replace(/\/+$/, '')
}

function jsonErrorLine (text: string, message: string): number | undefined {
  const m = /position (\d+)/.exec(message)
  if (!m) return /line (\d+)/.exec(message) ? Number(/line (\d+)/.exec(message)![1]) : undefined
  return text.slice(0, Number(m[1])).split('\n').length
}

function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function isString (v: unknown): v is string {
  return typeof v === 'string'
}
