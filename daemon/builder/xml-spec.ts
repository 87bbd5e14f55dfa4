// Reads an OS Farm style XML spec into the same plain object a JSON spec parses to, plus the
// line of every field, so one validator serves both formats and XML errors can name a line.
//
//   <image name="web" flavour="debian">           attributes and child elements are both fields
//     <release>bookworm</release>                  an element with only text is a string
//     <packages><package>curl</package></packages> a list container holds its singular items
//     <file path="/etc/motd" mode="0644">hi</file> text beside attributes is the `content` field
//   </image>

import sax from 'sax'

// No field of a spec lies deeper than a few elements; deeper nesting is refused while parsing,
// before anything recurses over it.
export const MAX_XML_DEPTH = 16

// List containers and the one item element each may hold.
const LISTS: Record<string, string> = {
  packages: 'package',
  files: 'file',
  scripts: 'script',
  repositories: 'repository',
  outputs: 'output',
  components: 'component',
  suites: 'suite',
  labels: 'label'
}

export type Lines = Map<string, number>

export class XmlSpecError extends Error {
  readonly line: number | undefined
  readonly field: string | undefined
  constructor (message: string, line?: number, field?: string) {
    super(message)
    this.line = line
    this.field = field
  }
}

interface Node {
  name: string
  line: number
  attributes: Record<string, string>
  children: Node[]
  text: string
}

export function readXmlSpec (text: string): { value: unknown, lines: Lines } {
  const parser = sax.parser(true, { trim: false, normalize: false, position: true })
  const stack: Node[] = []
  let root: Node | undefined
  let failure: XmlSpecError | undefined
  const fail = (message: string, line: number) => { failure ??= new XmlSpecError(message, line) }

  parser.onerror = err => {
    fail(`malformed XML: ${err.message.split('\n')[0]}`, parser.line + 1)
    // sax throws again on the next write unless the error is cleared; stop feeding instead.
  }
  parser.ondoctype = () => fail('DOCTYPE is not allowed in a spec', parser.line + 1)
  parser.onopentag = tag => {
    if (stack.length >= MAX_XML_DEPTH) {
      fail(`<${tag.name}> is nested ${stack.length + 1} elements deep; a spec goes at most ${MAX_XML_DEPTH} deep`, parser.line + 1)
      // Counted but not kept: the tree stays within the limit.
      stack.push(stack.at(-1)!)
      return
    }
    const node: Node = { name: tag.name, line: parser.line + 1, attributes: { ...(tag.attributes as Record<string, string>) }, children: [], text: '' }
    const parent = stack.at(-1)
    if (parent) parent.children.push(node)
    else if (root) fail('more than one root element', node.line)
    else root = node
    stack.push(node)
  }
  parser.onclosetag = () => { stack.pop() }
  const onText = (t: string) => {
    const top = stack.at(-1)
    if (top) top.text += t
    else if (t.trim()) fail('text outside the root element', parser.line + 1)
  }
  parser.ontext = onText
  parser.oncdata = onText

  try {
    parser.write(text).close()
  } catch (err) {
    fail(`malformed XML: ${(err as Error).message.split('\n')[0]}`, parser.line + 1)
  }
  if (failure) throw failure
  if (!root) throw new XmlSpecError('malformed XML: no root element', 1)
  if (root.name !== 'image') throw new XmlSpecError(`the root element must be <image>, not <${root.name}>`, root.line)

  const lines: Lines = new Map()
  const value = toObject(root, '', lines)
  return { value, lines }
}

function toObject (node: Node, path: string, lines: Lines): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  lines.set(path, node.line)
  const set = (key: string, value: unknown, line: number) => {
    const field = join(path, key)
    if (Object.hasOwn(out, key)) throw new XmlSpecError(`${field} is given more than once`, line, field)
    out[key] = value
    lines.set(field, line)
  }
  for (const [k, v] of Object.entries(node.attributes)) set(k, v, node.line)
  for (const child of node.children) set(child.name, toValue(child, join(path, child.name), lines), child.line)
  const text = blockText(node.text)
  if (text !== '') {
    if (node.children.length) throw new XmlSpecError(`<${node.name}> mixes text and elements`, node.line, path || node.name)
    set('content', text, node.line)
  }
  return out
}

function toValue (node: Node, path: string, lines: Lines): unknown {
  const item = LISTS[node.name]
  if (item !== undefined) {
    if (Object.keys(node.attributes).length) throw new XmlSpecError(`<${node.name}> takes no attributes`, node.line, path)
    if (node.text.trim()) throw new XmlSpecError(`<${node.name}> holds only <${item}> elements`, node.line, path)
    return node.children.map((child, i) => {
      const field = `${path}[${i}]`
      if (child.name !== item) throw new XmlSpecError(`<${node.name}> holds only <${item}> elements, not <${child.name}>`, child.line, field)
      lines.set(field, child.line)
      return toValue(child, field, lines)
    })
  }
  if (!node.children.length && !Object.keys(node.attributes).length) return node.text.trim()
  return toObject(node, path, lines)
}

// Text of a content element: a leading newline and the common indentation are layout, not
// content (so a script can be indented under its element); a trailing newline is kept.
function blockText (raw: string): string {
  if (!raw.trim()) return ''
  let lines = raw.split('\n')
  if (lines.length === 1) return raw.trim()
  if (!lines[0]!.trim()) lines = lines.slice(1)
  while (lines.length && !lines.at(-1)!.trim()) lines.pop()
  const indent = Math.min(...lines.filter(l => l.trim()).map(l => l.match(/^[ \t]*/)![0].length))
  return lines.map(l => l.slice(indent)).join('\n') + '\n'
}

function join (path: string, key: string): string {
  return path ? `${path}.${key}` : key
}
