// Fast unit tests of the builder's front half: spec parsing (XML and JSON), validation errors
// with field and line, canonical form and layer keys, host mirror reading. No build runs here.

import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseSpec, detectFormat, type ImageSpec } from '../daemon/builder/spec.js'
import { planBuild, layerKey } from '../daemon/builder/plan.js'
import { canonicalJson } from '../daemon/builder/canonical.js'
import { parseDeb822, parseOneLine, pickMirror } from '../daemon/builder/host-mirror.js'
import { derivedUuid } from '../daemon/builder/builder.js'
import { resolveInRoot, writeInRoot } from '../daemon/builder/steps.js'
import { mmdebstrapArgs, debootstrapArgs } from '../daemon/builder/tools/mmdebstrap.js'
import { aptFailure, installArgs } from '../daemon/builder/tools/apt.js'
import { checkLabels, dropLabels, mergeLabels, sameLabels, splitLabels } from '../daemon/images/labels.js'
import { OsfarmError } from '../protocol/errors.js'
import { VOLUME_KEY } from '../daemon/store/layer-store.js'
import type { HostInfo } from '../daemon/builder/flavours/flavour.js'
import { SourceStore } from '../daemon/builder/sources.js'
import { StreamRegistry } from '../daemon/rpc/streams.js'
import { createLogger } from '../daemon/log.js'
import { hash, toHex } from '../daemon/blocks/hash.js'

const EXAMPLES = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../examples')
const HOST: HostInfo = { sources: [{ uri: 'http://mirror.invalid/debian', suites: ['bookworm', 'bookworm-updates'], components: ['main'] }], mmdebstrap: true }

// Specs are planned from daemon-owned copies of their files, as the build service does.
let sourcesDir: string
let sources: SourceStore
t.before(async () => {
  sourcesDir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-sources-'))
  sources = new SourceStore({ dir: sourcesDir, streams: new StreamRegistry(), limits: { fileBytes: 1 << 20, rootfsBytes: 1 << 20 }, log: createLogger('error') })
  await sources.start()
})
t.teardown(async () => { sources.stop(); await fs.rm(sourcesDir, { recursive: true, force: true }) })
const resolved = async (spec: ImageSpec) => (await sources.resolve(spec, 'admin')).spec

function specError (fn: () => unknown): OsfarmError {
  try {
    fn()
  } catch (err) {
    if (err instanceof OsfarmError) return err
    throw err
  }
  throw new Error('expected a SPEC_INVALID error')
}

function issues (err: OsfarmError): Array<{ field: string, line?: number, message: string }> {
  return (err.details as { issues: Array<{ field: string, line?: number, message: string }> }).issues
}

const xml = (body: string) => `<?xml version="1.0"?>\n<image name="t">\n  <release>bookworm</release>\n${body}\n</image>\n`

t.test('the examples parse, XML and JSON alike', async t => {
  const names = (await fs.readdir(EXAMPLES)).filter(n => /\.(xml|json)$/.test(n))
  t.ok(names.length >= 6)
  for (const name of names) {
    const text = await fs.readFile(path.join(EXAMPLES, name), 'utf8')
    const spec = parseSpec(text, detectFormat(text, name), { baseDir: EXAMPLES })
    t.equal(spec.release, name.split('-')[0], `${name}: the release its name says`)
  }
  const fromXml = parseSpec(await fs.readFile(path.join(EXAMPLES, 'bookworm-ssh.xml'), 'utf8'), 'xml')
  const fromJson = parseSpec(await fs.readFile(path.join(EXAMPLES, 'bookworm-ssh.json'), 'utf8'), 'json')
  t.same(fromXml, fromJson, 'one spec in two formats is one typed spec')
  t.equal((await planBuild(fromXml, HOST)).key, (await planBuild(fromJson, HOST)).key, 'and one key')
})

t.test('XML: attributes, lists, content blocks and defaults', async t => {
  const spec = parseSpec(xml(`  <size>1G</size>
  <bootable>yes</bootable>
  <packages><package>curl</package><package>openssh-server=1:9.2p1-2</package></packages>
  <files>
    <file path="/etc/motd" mode="0600" owner="root:adm">
      line one
        indented
    </file>
    <file path="/srv/blob" encoding="base64"><![CDATA[AAEC]]></file>
  </files>
  <scripts><script name="one">echo hi</script></scripts>
  <repositories>
    <repository uri="http://example.invalid/repo" suites="stable extra" components="main"/>
  </repositories>`), 'xml')
  t.equal(spec.size, 2 ** 30)
  t.equal(spec.bootable, true)
  t.same(spec.packages, ['curl', 'openssh-server=1:9.2p1-2'])
  t.equal(spec.files[0]!.content, 'line one\n  indented\n', 'layout indentation is stripped')
  t.equal(spec.files[0]!.mode, 0o600)
  t.equal(spec.files[0]!.group, 'adm')
  t.equal(spec.files[1]!.content, 'AAEC')
  t.equal(spec.scripts[0]!.name, 'one')
  t.same(spec.repositories[0]!.suites, ['stable', 'extra'])
  t.equal(spec.flavour, 'debian')
  t.equal(spec.arch, 'amd64')
  t.equal(spec.variant, 'minbase')
  t.same(spec.outputs, ['raw'])
})

t.test('malformed XML names its line', async t => {
  const err = specError(() => parseSpec('<image name="x">\n  <release>bookworm</release>\n  <size>2G</sise>\n</image>', 'xml'))
  t.equal(err.code, 'SPEC_INVALID')
  t.equal(issues(err)[0]!.line, 3)
  t.match(err.message, /malformed XML/)
  t.equal(specError(() => parseSpec('', 'xml')).code, 'SPEC_INVALID')
  t.match(specError(() => parseSpec('<spec/>', 'xml')).message, /root element must be <image>/)
  t.match(specError(() => parseSpec('<!DOCTYPE x [<!ENTITY a "aaaa">]><image/>', 'xml')).message, /DOCTYPE/)
  t.match(specError(() => parseSpec('<image><packages><file/></packages></image>', 'xml')).message, /holds only <package>/)
})

t.test('malformed JSON', async t => {
  const err = specError(() => parseSpec('{\n  "name": "x",\n  "release": }', 'json'))
  t.equal(err.code, 'SPEC_INVALID')
  t.match(err.message, /malformed JSON/)
  t.equal(specError(() => parseSpec('[]', 'json')).code, 'SPEC_INVALID')
  t.equal(specError(() => parseSpec('null', 'json')).code, 'SPEC_INVALID')
})

t.test('unknown fields are refused, with field and line', async t => {
  const err = specError(() => parseSpec(xml('  <colour>blue</colour>\n  <files><file path="/a" perms="0644">x</file></files>'), 'xml'))
  const list = issues(err)
  t.same(list.map(i => i.field), ['colour', 'files[0].perms'])
  t.same(list.map(i => i.line), [4, 5])
  const jerr = specError(() => parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', pacakges: ['curl'] }), 'json'))
  t.equal(issues(jerr)[0]!.field, 'pacakges')
  t.match(jerr.message, /^SPEC_INVALID: pacakges: unknown field/)
})

t.test('file paths must stay inside the image', async t => {
  for (const bad of ['/etc/../../root/.ssh/authorized_keys', '/../etc/passwd', 'etc/motd', '../x', '/', '/etc/./motd', '/etc/', 'a\0b']) {
    const err = specError(() => parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', files: [{ path: bad, content: 'x' }] }), 'json'))
    t.equal(err.code, 'SPEC_INVALID', JSON.stringify(bad))
    t.equal(issues(err)[0]!.field, 'files[0].path')
  }
  const ok = parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', files: [{ path: '//etc//motd', content: 'x' }] }), 'json')
  t.equal(ok.files[0]!.path, '/etc/motd', 'normalised')
  const dup = specError(() => parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', files: [{ path: '/a', content: 'x' }, { path: '//a', content: 'y' }] }), 'json'))
  t.match(dup.message, /more than once/)
})

t.test('package names with shell metacharacters are refused', async t => {
  for (const bad of ['curl; rm -rf /', '$(reboot)', 'vim`id`', 'a|b', 'a&&b', '-oAPT::x=1', 'Curl', 'a b', 'a>b', '']) {
    const err = specError(() => parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', packages: [bad] }), 'json'))
    t.equal(issues(err)[0]!.field, 'packages[0]', JSON.stringify(bad))
  }
  const spec = parseSpec(JSON.stringify({ name: 'x', release: 'bookworm', packages: ['libc6:amd64', 'g++', 'python3.11', 'openssh-server=1:9.2p1-2+deb12u3'] }), 'json')
  t.equal(spec.packages.length, 4)
})

t.test('other validation: every issue reported at once', async t => {
  const err = specError(() => parseSpec(JSON.stringify({
    name: 'bad name!',
    flavour: 'gentoo',
    variant: 'huge',
    size: '10M',
    filesystem: 'btrfs',
    outputs: ['vmdk'],
    bootable: 'yes',
    mirror: 'ftp://x',
    files: [{ path: '/a', mode: '999', owner: 'root;id' }, { path: '/b', content: 'x', source: '/etc/hostname' }],
    scripts: [{ name: 'x', content: '  ' }, 7]
  }), 'json'))
  const fields = issues(err).map(i => i.field)
  for (const f of ['name', 'flavour', 'variant', 'size', 'filesystem', 'outputs[0]', 'bootable', 'mirror', 'files[0].mode', 'files[0].owner', 'files[0]', 'files[1]', 'scripts[0].content', 'scripts[1]']) {
    t.ok(fields.includes(f), `reports ${f}`)
  }
  t.match(specError(() => parseSpec('{"name":"x"}', 'json')).message, /release: is required/)
  t.match(specError(() => parseSpec('{"name":"x","flavour":"ubuntu","release":"noble"}', 'json')).message, /mirror: is required for the ubuntu flavour/)
  t.match(specError(() => parseSpec('{"name":"x","flavour":"rootfs"}', 'json')).message, /rootfs: is required/)
  t.match(specError(() => parseSpec('{"name":"x","release":"bookworm","repositories":[{"uri":"http://r.invalid","suites":"s","key":"not a key"}]}', 'json')).message, /ASCII-armored/)
  t.match(specError(() => parseSpec('x'.repeat((1 << 20) + 1), 'json')).message, /larger than/)
})

t.test('labels: a list in JSON and XML, each checked', async t => {
  const fromJson = parseSpec(JSON.stringify({ name: 'a', release: 'bookworm', labels: ['channel=stable', 'team=web'] }), 'json')
  t.same(fromJson.labels, ['channel=stable', 'team=web'])
  const fromXml = parseSpec(xml('  <labels>\n    <label>channel=stable</label>\n    <label>team=web</label>\n  </labels>'), 'xml')
  t.same(fromXml.labels, fromJson.labels, 'XML: <labels> holds <label> elements')
  t.same(parseSpec('{"name":"a","release":"bookworm"}', 'json').labels, [], 'none by default')

  const bad = specError(() => parseSpec(JSON.stringify({ name: 'a', release: 'bookworm', labels: ['channel=stable', 'no-equals', 7, 'a=b,c', '=v'] }), 'json'))
  t.equal(bad.code, 'SPEC_INVALID')
  t.same(issues(bad).map(i => i.field), ['labels[1]', 'labels[2]', 'labels[3]', 'labels[4]'])
  t.match(bad.message, /labels\[1\]: a label is key=value .*"no-equals"/, 'the bad label is named')
  const xbad = specError(() => parseSpec(xml('  <labels>\n    <label>ok=1</label>\n    <label>team web</label>\n  </labels>'), 'xml'))
  t.same(issues(xbad).map(i => [i.field, i.line]), [['labels[1]', 6]], 'with its line')
  t.match(xbad.message, /"team web"/)
  t.match(specError(() => parseSpec(xml('  <labels><package>x</package></labels>'), 'xml')).message, /holds only <label>/)
  t.match(specError(() => parseSpec('{"name":"a","release":"bookworm","labels":"channel=stable"}', 'json')).message, /labels: must be a list/)
  const many = Array.from({ length: 33 }, (_, i) => `k${i}=v`)
  t.match(specError(() => parseSpec(JSON.stringify({ name: 'a', release: 'bookworm', labels: many }), 'json')).message, /labels: at most 32 labels/)
})

t.test('labels are metadata: not part of any layer key', async t => {
  const spec = { name: 'a', release: 'bookworm', packages: ['curl'], files: [{ path: '/a', content: 'x' }], scripts: ['true'] }
  const plain = await planBuild(await resolved(parseSpec(JSON.stringify(spec), 'json')), HOST)
  const labelled = await planBuild(await resolved(parseSpec(JSON.stringify({ ...spec, labels: ['channel=stable'] }), 'json')), HOST)
  t.equal(labelled.key, plain.key)
  t.same(labelled.layers.map(l => l.key), plain.layers.map(l => l.key))
})

t.test('build --label: split like import\'s, each replacing the spec\'s labels with its key', async t => {
  t.same(splitLabels(' channel=beta, ,team=ops '), ['channel=beta', 'team=ops'])
  t.same(mergeLabels(['channel=stable', 'team=web', 'team=api', 'os=debian'], ['team=ops', 'channel=beta']), ['os=debian', 'team=ops', 'channel=beta'], 'every spec label with a given key goes')
  t.same(mergeLabels(['a=1'], []), ['a=1'])
  t.same(mergeLabels([], ['a=1', 'a=2', 'a=1']), ['a=1', 'a=2'], 'a key may hold several values')
  t.ok(sameLabels(['a=1', 'b=2'], ['b=2', 'a=1']), 'order does not matter')
  t.notOk(sameLabels(['a=1'], ['a=1', 'b=2']))
  t.same(dropLabels(['team=web', 'team=api', 'os=debian'], ['team']), ['os=debian'], 'a key drops every label of that key')
  t.same(dropLabels(['team=web', 'team=api'], ['team=api', 'nothing']), ['team=web'], 'a key=value drops that label alone; an unknown one nothing')
  t.throws(() => checkLabels(['ok=1', 'bad label']), { code: 'BAD_PARAMS', message: /"bad label"/ })
  t.throws(() => checkLabels(Array.from({ length: 33 }, (_, i) => `k${i}=v`)), { code: 'BAD_PARAMS', message: /at most 32/ })
})

t.test('canonical JSON sorts keys at every depth', async t => {
  t.equal(canonicalJson({ b: 1, a: [{ d: 'x', c: null }], e: undefined }), '{"a":[{"c":null,"d":"x"}],"b":1}')
  t.throws(() => canonicalJson({ a: NaN }))
})

t.test('layer plan and keys', async t => {
  const base: ImageSpec = parseSpec('{"name":"a","release":"bookworm"}', 'json')
  const p1 = await planBuild(base, HOST)
  t.same(p1.layers.map(l => l.kind), ['base'])
  t.equal(p1.layers[0]!.step.mirror, 'http://mirror.invalid/debian', 'the host mirror by default')
  t.equal(p1.key, p1.layers[0]!.key)
  t.match(p1.key, VOLUME_KEY)
  t.equal(p1.key.length, 64)

  const renamed = await planBuild(parseSpec('{"name":"b","release":"bookworm","outputs":["qcow2"]}', 'json'), HOST)
  t.equal(renamed.key, p1.key, 'name and outputs are not part of the image')

  const ssh = await planBuild(parseSpec('{"name":"a","release":"bookworm","packages":["openssh-server","curl","curl"]}', 'json'), HOST)
  t.same(ssh.layers.map(l => l.kind), ['base', 'packages'])
  t.equal(ssh.layers[0]!.key, p1.key, 'the base layer is shared')
  t.same(ssh.layers[1]!.step.packages, ['curl', 'openssh-server'], 'packages sorted and unique')
  t.equal(ssh.layers[1]!.parent, p1.key)
  t.equal(ssh.layers[1]!.key, layerKey(p1.key, ssh.layers[1]!.step), 'key = BLAKE3(parent ‖ canonical step)')
  const reordered = await planBuild(parseSpec('{"name":"a","release":"bookworm","packages":["curl","openssh-server"]}', 'json'), HOST)
  t.equal(reordered.key, ssh.key, 'package order does not change the key')

  const all = await planBuild(await resolved(parseSpec(JSON.stringify({
    name: 'a', release: 'bookworm', packages: ['curl'], bootable: true,
    files: [{ path: '/b', content: 'x' }, { path: '/a', content: 'aGk=', encoding: 'base64' }],
    scripts: ['echo one', { name: 'two', content: 'echo two' }]
  }), 'json')), HOST)
  t.same(all.layers.map(l => l.kind), ['base', 'packages', 'files', 'scripts', 'boot'])
  t.ok((all.layers[1]!.step.packages as string[]).includes('linux-image-amd64'), 'bootable adds a kernel')
  t.same(await fs.readFile(all.sources.get('/a')!), Buffer.from('hi'), 'inline content is planned from a copy')
  t.equal((all.layers[2]!.step.files as Array<{ blake3: string }>)[0]!.blake3, toHex(hash(Buffer.from('hi'))), 'keyed by the content\'s BLAKE3')
  await t.rejects(planBuild(parseSpec('{"name":"a","release":"bookworm","files":[{"path":"/a","content":"x"}]}', 'json'), HOST), /not resolved/, 'an unresolved spec is never planned from host paths')
  t.same((all.layers[2]!.step.files as Array<{ path: string }>).map(f => f.path), ['/a', '/b'])

  const other = await planBuild(await resolved(parseSpec(JSON.stringify({ name: 'a', release: 'bookworm', packages: ['curl'], bootable: true, files: [{ path: '/b', content: 'x' }, { path: '/a', content: 'aGk=', encoding: 'base64' }], scripts: ['echo one', { name: 'two', content: 'echo 2' }] }), 'json')), HOST)
  t.same(other.layers.slice(0, 3).map(l => l.key), all.layers.slice(0, 3).map(l => l.key), 'a change in the scripts keeps every lower layer')
  t.not(other.layers[3]!.key, all.layers[3]!.key)

  const bigger = await planBuild(parseSpec('{"name":"a","release":"bookworm","size":"4G"}', 'json'), HOST)
  t.not(bigger.key, p1.key, 'size is part of the base')
  const mirrored = await planBuild(parseSpec('{"name":"a","release":"bookworm","mirror":"http://other.invalid/debian/"}', 'json'), HOST)
  t.equal(mirrored.layers[0]!.step.mirror, 'http://other.invalid/debian')
  t.not(mirrored.key, p1.key)
})

t.test('file sources are copied in when resolved and hashed into the key', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-spec-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  await fs.writeFile(path.join(dir, 'motd'), 'one\n')
  const spec = parseSpec('{"name":"a","release":"bookworm","files":[{"path":"/etc/motd","source":"motd"}]}', 'json', { baseDir: dir })
  t.equal(spec.files[0]!.source, path.join(dir, 'motd'))
  t.same(SourceStore.named(spec), [{ field: 'files[0].source', path: path.join(dir, 'motd') }])
  const first = await resolved(spec)
  t.ok(first.files[0]!.source!.startsWith(sourcesDir + '/'), 'planned from the daemon\'s copy')
  const k1 = (await planBuild(first, HOST)).key
  await fs.writeFile(path.join(dir, 'motd'), 'two\n')
  t.not((await planBuild(await resolved(spec), HOST)).key, k1)
  await fs.rm(path.join(dir, 'motd'))
  await t.rejects(resolved(spec), { code: 'SPEC_INVALID', message: /files\[0\]\.source/ })
  await t.rejects(sources.resolve(spec, 'user'), { code: 'PERMISSION_DENIED', message: /files\[0\]\.source.*only for root/ }, 'a caller without root cannot name a host file')
  await fs.writeFile(path.join(dir, 'big'), Buffer.alloc((1 << 20) + 1))
  await t.rejects(resolved(parseSpec('{"name":"a","release":"bookworm","files":[{"path":"/big","source":"big"}]}', 'json', { baseDir: dir })), { code: 'SPEC_INVALID', message: /over the limit.*maxSourceBytes/ })
})

t.test('rootfs flavour: keyed by the tarball content', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-spec-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  await fs.writeFile(path.join(dir, 'a.tar'), 'pretend tarball')
  const spec = await resolved(parseSpec('{"name":"a","flavour":"rootfs","rootfs":"a.tar","packages":["perl-Data-Dumper"]}', 'json', { baseDir: dir }))
  const p = await planBuild(spec, HOST)
  t.equal(p.layers[0]!.step.flavour, 'rootfs')
  t.match(p.layers[0]!.step.tarball as string, /^[0-9a-f]{64}$/)
  t.equal(p.layers[0]!.step.tarball, (await planBuild(spec, HOST)).layers[0]!.step.tarball)
  t.match(specError(() => parseSpec('{"name":"a","flavour":"rootfs","rootfs":"a.tar","bootable":true}', 'json', { baseDir: dir })).message, /bootable/)
})

t.test('ubuntu flavour: its keyring and the spec\'s mirror', async t => {
  const spec = parseSpec('{"name":"u","flavour":"ubuntu","release":"noble","mirror":"http://ubuntu.invalid/ubuntu","components":["main","universe"]}', 'json')
  const p = await planBuild(spec, HOST)
  t.equal(p.layers[0]!.step.mirror, 'http://ubuntu.invalid/ubuntu')
  t.equal(p.layers[0]!.step.keyring, '/usr/share/keyrings/ubuntu-archive-keyring.gpg')
  const args = mmdebstrapArgs({ release: 'noble', dir: '/d', mirror: 'http://ubuntu.invalid/ubuntu', variant: 'minbase', arch: 'amd64', components: ['main', 'universe'], keyring: '/k.gpg', epoch: 1 })
  t.ok(args.includes('--keyring=/k.gpg'))
  t.ok(args.includes('--components=main,universe'))
  t.same(args.slice(-3), ['noble', '/d', 'http://ubuntu.invalid/ubuntu'])
  t.same(debootstrapArgs({ release: 'noble', dir: '/d', mirror: 'm', variant: 'important', arch: 'amd64', components: ['main'], epoch: 1 }).slice(0, 1), ['--arch=amd64'], 'debootstrap has no "important" variant')
})

t.test('host apt sources: deb822 and one-line', async t => {
  const sources = parseDeb822(`Types: deb deb-src
# a comment
URIs: http://a.invalid/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://a.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://off.invalid/debian
Suites: trixie
Components: main
`)
  t.equal(sources.length, 2)
  t.equal(pickMirror(sources, 'bookworm'), 'http://a.invalid/debian')
  t.equal(pickMirror(sources, 'trixie'), 'http://a.invalid/debian', 'another release: the main archive')
  t.same(parseOneLine('deb [arch=amd64] http://b.invalid/debian bookworm main contrib\n# deb http://c bookworm main\n'), [{ uri: 'http://b.invalid/debian', suites: ['bookworm'], components: ['main', 'contrib'] }])
})

t.test('apt output is read into error codes', async t => {
  t.equal(aptFailure(['E: Unable to locate package no-such-pkg'], 'x').code, 'PACKAGE_NOT_FOUND')
  t.same(aptFailure(['E: Unable to locate package no-such-pkg'], 'x').details, { packages: ['no-such-pkg'] })
  t.equal(aptFailure(['E: Package \'foo\' has no installation candidate'], 'x').code, 'PACKAGE_NOT_FOUND')
  t.equal(aptFailure(['E: Failed to fetch http://127.0.0.1:1/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:1'], 'x').code, 'MIRROR_UNREACHABLE')
  t.equal(aptFailure(['dpkg: error processing archive x (--unpack):', ' cannot copy extracted data: No space left on device'], 'x').code, 'SIZE_TOO_SMALL')
  t.equal(aptFailure(['E: something else'], 'x').code, 'BUILD_FAILED')
  t.same(installArgs(['a']).slice(-2), ['--', 'a'], 'package names come after --')
})

t.test('derived UUIDs are stable and well-formed', async t => {
  const u = derivedUuid('abc', 'uuid')
  t.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  t.equal(derivedUuid('abc', 'uuid'), u)
  t.not(derivedUuid('abc', 'hash_seed'), u)
})

t.test('writes into a root never leave it, whatever its symlinks say', async t => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osfarm-root-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const root = path.join(dir, 'root')
  const outside = path.join(dir, 'outside')
  await fs.mkdir(path.join(root, 'etc'), { recursive: true })
  await fs.mkdir(outside)
  await fs.symlink(outside, path.join(root, 'etc/abs'))
  await fs.symlink('../../../../outside', path.join(root, 'etc/rel'))
  await fs.symlink('/etc/motd', path.join(root, 'etc/motd-link'))
  const o = { mode: 0o644, uid: process.getuid!(), gid: process.getgid!(), epoch: 1704067200 }
  await writeInRoot(root, '/etc/abs/x', Buffer.from('a'), o)
  await writeInRoot(root, '/etc/rel/y', Buffer.from('b'), o)
  await writeInRoot(root, '/etc/motd-link', Buffer.from('c'), o)
  await writeInRoot(root, '/new/dir/z', Buffer.from('d'), { ...o, mode: 0o600 })
  t.same(await fs.readdir(outside), [], 'nothing written outside the root')
  t.equal(await fs.readFile(path.join(root, dir, 'outside/x'), 'utf8'), 'a', 'an absolute link resolves inside the root')
  t.equal(await fs.readFile(path.join(root, 'outside/y'), 'utf8'), 'b', '.. stops at the root')
  t.equal(await fs.readFile(path.join(root, 'etc/motd'), 'utf8'), 'c', 'a link to a file is written through')
  const st = await fs.stat(path.join(root, 'new/dir/z'))
  t.equal(st.mode & 0o777, 0o600)
  t.equal(st.mtimeMs, 1704067200 * 1000)
  await fs.symlink('loop', path.join(root, 'loop'))
  await t.rejects(resolveInRoot(root, '/loop/x', true), { code: 'BUILD_FAILED' })
})
