// The mirror this host's apt already uses, read at run time from its sources (deb822 .sources
// files and one-line .list files), so no mirror host name is ever written into osfarm.

import fs from 'node:fs/promises'
import path from 'node:path'

export interface AptSource {
  uri: string
  suites: string[]
  components: string[]
}

export async function readHostSources (aptDir = '/etc/apt'): Promise<AptSource[]> {
  const out: AptSource[] = []
  const list = await fs.readFile(path.join(aptDir, 'sources.list'), 'utf8').catch(() => '')
  out.push(...parseOneLine(list))
  const dir = path.join(aptDir, 'sources.list.d')
  const names = (await fs.readdir(dir).catch(() => [] as string[])).sort()
  for (const name of names) {
    const text = await fs.readFile(path.join(dir, name), 'utf8').catch(() => '')
    if (name.endsWith('.sources')) out.push(...parseDeb822(text))
    else if (name.endsWith('.list')) out.push(...parseOneLine(text))
  }
  return out
}

// The source that serves the release itself: one listing the release as a suite, else the
// first whose suites are plain release names (not -security, -updates or -backports).
export function pickMirror (sources: AptSource[], release: string): string | undefined {
  const plain = (s: string) => !/[-/](security|updates|backports|proposed)$/.test(s)
  const exact = sources.find(s => s.suites.includes(release))
  const any = exact ?? sources.find(s => s.suites.some(plain) && !/security/.test(s.uri))
  return any?.uri.replace(/\/+$/, '')
}

export function parseDeb822 (text: string): AptSource[] {
  const out: AptSource[] = []
  const stanzas = text.split(/\n\s*\n/)
  for (const stanza of stanzas) {
    const fields = new Map<string, string>()
    let last: string | undefined
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue
      if (/^\s/.test(line) && last) { fields.set(last, fields.get(last) + ' ' + line.trim()); continue }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line)
      if (m) { last = m[1]!.toLowerCase(); fields.set(last, m[2]!.trim()) }
    }
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue
    if (/^(no|false)$/i.test(fields.get('enabled') ?? 'yes')) continue
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean)
    for (const uri of words('uris')) out.push({ uri, suites: words('suites'), components: words('components') })
  }
  return out
}

export function parseOneLine (text: string): AptSource[] {
  const out: AptSource[] = []
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, '').trim()
    const [type, uri, suite, ...components] = line.split(/\s+/)
    if (type === 'deb' && uri && suite) out.push({ uri, suites: [suite], components })
  }
  return out
}
