// The web console end to end: a real osfarmd with --http, driven by Debian's chromium through
// playwright-core. The HTTP endpoint's rules (same method table, access, refusals) are checked
// with plain requests; then a spec is written in the editor, refused with the daemon's errors
// beside its fields, built for real (mmdebstrap minbase), found in the repository and downloaded
// as raw and qcow2; last, two daemons in a fleet: the console shows the peer, fetches its image
// with live progress and shows who holds what. Screenshots of every page: test-artifacts/web/.

import t, { type Test } from 'tap'
import { eventually } from '../testing/eventually.js'
import fs from 'node:fs/promises'
import http from 'node:http'
import zlib from 'node:zlib'
import { existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { chromium, type BrowserContext, type Locator, type Page } from 'playwright-core'
import { startDaemon, tempDir, type TestDaemon } from '../testing/daemon.js'
import { joinFleet, makeImagePair, startTestnet, waitPeers } from '../testing/fleet.js'
import { readFile as debugfsRead } from '../daemon/builder/tools/mke2fs.js'

const CHROMIUM = '/usr/bin/chromium'
const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test-artifacts/web')
const WEB_INDEX = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../web/index.html')
const BUILD_TIMEOUT_MS = 240_000
const TOKEN = 'web-test-token-0123456789'
const NOBODY = 65534

if (!existsSync(CHROMIUM)) {
  t.plan(0, `${CHROMIUM} is missing (apt-get install chromium, or scripts/deps)`)
  process.exit(0)
}
if (!existsSync(WEB_INDEX)) throw new Error('dist/web is not built: npm run build')
await fs.mkdir(ARTIFACTS, { recursive: true })

const urlOf = (d: TestDaemon): string => {
  const m = /msg="web console listening".* url=(\S+)/.exec(d.output())
  if (!m) throw new Error(`no console url in the daemon's output:\n${d.output()}`)
  return m[1]!
}

// Stops a daemon and removes its directory. A build cancelled half-way must not leave mounts
// behind; any it did are a failure, unmounted so the directory can go.
async function cleanup (t: Test, d: TestDaemon): Promise<void> {
  await d.stop()
  const mounts = (await fs.readFile('/proc/mounts', 'utf8')).split('\n').map(l => l.split(' ')[1] ?? '').filter(m => m.startsWith(d.dir + '/'))
  if (mounts.length) t.fail(`mounts left behind: ${mounts.join(', ')}`)
  for (const m of mounts.reverse()) await execa('umount', ['-l', m], { reject: false })
  await fs.rm(d.dir, { recursive: true, force: true })
}

async function rpc (base: string, method: string, params: unknown = {}, headers: Record<string, string> = {}) {
  const res = await fetch(new URL('rpc', base), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params })
  })
  return { status: res.status, body: await res.json() as any }
}

// A request made by another local user: the daemon sees the connection's owner.
async function fetchAs (uid: number, url: string, init: { method?: string, headers?: Record<string, string>, body?: string } = {}): Promise<{ status: number, text: string, cookie: string | null }> {
  const script = `fetch(${JSON.stringify(url)}, ${JSON.stringify(init)}).then(async r => { process.stdout.write(JSON.stringify({ status: r.status, text: await r.text(), cookie: r.headers.get('set-cookie') })) }, e => { process.stdout.write(JSON.stringify({ status: 0, text: String(e), cookie: null })) })`
  // tap adds its process-tracking hooks to every child's NODE_OPTIONS; as nobody they cannot
  // write their records, so the child drops them.
  const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', script], { cwd: '/', stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', d => { out += d })
  await new Promise(resolve => child.once('exit', resolve))
  return JSON.parse(out)
}

// fetch() sets Host itself; a DNS-rebinding page's requests carry the attacker's name.
function statusWithHost (base: string, host: string): Promise<number> {
  const body = '{"jsonrpc":"2.0","id":1,"method":"daemon.version"}'
  return new Promise((resolve, reject) => {
    const req = http.request(new URL('rpc', base), { method: 'POST', headers: { Host: host, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, res => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end(body)
  })
}

// A fresh Chromium profile; `errors` collects uncaught errors of the page's scripts.
async function browser (t: Test): Promise<{ ctx: BrowserContext, page: Page, errors: string[] }> {
  const profile = await tempDir('osfarm-chromium-')
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1440, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(async () => { await ctx.close(); await fs.rm(profile, { recursive: true, force: true }) })
  const page = ctx.pages()[0] ?? await ctx.newPage()
  const errors: string[] = []
  page.on('pageerror', e => errors.push(e.message))
  return { ctx, page, errors }
}

// The whole page in one picture: the viewport grows to the page's height (a full-page capture
// would paint the fixed header where the viewport happened to be), transitions settle first.
async function shot (page: Page, name: string): Promise<void> {
  const viewport = page.viewportSize()!
  const height = await page.evaluate('document.documentElement.scrollHeight') as number
  await page.setViewportSize({ width: viewport.width, height: Math.max(viewport.height, height) })
  await page.waitForTimeout(400)
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) })
  await page.setViewportSize(viewport)
}

// Waits until the element's text (as in the DOM, not as CSS shows it) matches.
async function waitText (l: Locator, re: RegExp, timeout = 15_000): Promise<string> {
  const end = Date.now() + timeout
  let text = ''
  return await eventually(`text matching ${re}`, async () => {
    text = (await l.textContent({ timeout: Math.max(1, end - Date.now()) }).catch(() => null)) ?? ''
    return re.test(text) ? text : undefined
  }, { timeoutMs: timeout }).catch(() => { throw new Error(`text ${JSON.stringify(text.slice(0, 300))} never matched ${re}`) })
}

// The error Mantine shows under an input, found through the input's aria-describedby.
async function fieldError (page: Page, input: Locator): Promise<string> {
  await eventually('an error on the input', async () => await input.getAttribute('aria-invalid') === 'true', { timeoutMs: 15_000 })
  const ids = ((await input.getAttribute('aria-describedby')) ?? '').split(/\s+/).filter(id => id.endsWith('-error'))
  if (!ids.length) throw new Error('the input has no error element')
  return (await page.locator(`[id="${ids[0]}"]`).textContent()) ?? ''
}

t.test('the HTTP endpoint: the socket\'s method table, access and refusals', async t => {
  const d = await startDaemon({ args: ['--http', '127.0.0.1:0'] })
  t.teardown(async () => { await d.stop(); await fs.rm(d.dir, { recursive: true, force: true }) })
  const base = urlOf(d)

  const version = await rpc(base, 'daemon.version')
  t.equal(version.body.result.apiVersion, 1, 'a method answers as on the socket')
  t.equal((await rpc(base, 'no.such.method')).body.error.data.code, 'UNKNOWN_METHOD')
  const bad = await rpc(base, 'image.get', { id: 5 })
  t.equal(bad.body.error.data.code, 'BAD_PARAMS')
  t.match(bad.body.error.message, /"id" must be a non-empty string/, 'params checked by the same table')
  const spec = await rpc(base, 'spec.check', { spec: JSON.stringify({ name: 'x', release: 'bookworm', files: [{ path: '../x', content: 'y' }] }), format: 'json' })
  t.equal(spec.body.error.data.code, 'SPEC_INVALID')
  t.match(spec.body.error.data.issues, [{ field: 'files[0].path' }], 'spec issues name their field')

  const plain = await fetch(new URL('rpc', base), { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: '{}' })
  t.equal(plain.status, 415, 'a non-JSON POST (what a cross-site form can send) is refused')
  const foreign = await rpc(base, 'daemon.version', {}, { Origin: 'http://evil.example' })
  t.equal(foreign.status, 403, 'a request from another origin is refused')
  t.equal(await statusWithHost(base, 'evil.example'), 403, 'a non-loopback Host name (DNS rebinding) gets no local trust')
  t.equal(await statusWithHost(base, `localhost:${new URL(base).port}`), 200, 'localhost is a loopback name')
  const nobody = await fetchAs(NOBODY, new URL('rpc', base).href, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"jsonrpc":"2.0","id":1,"method":"daemon.version"}' })
  t.equal(nobody.status, 403, 'a local user the socket refuses is refused here too')
  t.equal(JSON.parse(nobody.text).error.data.code, 'PERMISSION_DENIED')

  const events = await fetch(new URL('rpc', base), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'job.watch', params: { id: 'nope' } })
  })
  t.match(events.headers.get('content-type'), /text\/event-stream/)
  t.match(await events.text(), /event: response\ndata: .*"JOB_NOT_FOUND"/, 'an event stream ends with the response')

  const page = await fetch(new URL('editor', base))
  t.equal(page.status, 200)
  t.match(await page.text(), /<div id="root">/, 'client routes get the console')
  t.equal((await fetch(new URL('assets/missing.js', base))).status, 404)
  t.match(page.headers.get('content-security-policy'), /default-src 'self'/)
  const missing = await fetch(new URL('images/nope/download?format=raw', base))
  t.equal(missing.status, 404)
  t.equal((await missing.json() as any).error.code, 'IMAGE_NOT_FOUND')
  t.equal((await fetch(new URL('images/nope/download?format=vmdk', base))).status, 400)
})

t.test('package.search reads the chosen repository\'s Packages index', async t => {
  const dir = await tempDir('osfarm-web-repo-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const index = path.join(dir, 'repo/dists/stable/main/binary-amd64')
  await fs.mkdir(index, { recursive: true })
  const stanza = (name: string, description: string) => `Package: ${name}\nVersion: 1.0-1\nSection: net\nInstalled-Size: 42\nDescription: ${description}\n continued long description\n`
  await fs.writeFile(path.join(index, 'Packages.gz'), zlib.gzipSync([
    stanza('curl-extra', 'more curl'), stanza('curl', 'command line tool for transferring data'), stanza('libfoo', 'uses curl inside'), stanza('wget', 'retrieves files')
  ].join('\n')))
  const d = await startDaemon({ args: ['--http', '127.0.0.1:0'] })
  t.teardown(async () => { await d.stop(); await fs.rm(d.dir, { recursive: true, force: true }) })
  const uri = `file://${dir}/repo`
  const r = (await rpc(urlOf(d), 'package.search', { query: 'curl', suite: 'stable', uri, arch: 'amd64' })).body.result
  t.equal(r.total, 4)
  t.same(r.packages.map((p: any) => p.name), ['curl', 'curl-extra', 'libfoo'], 'exact name, then prefix, then description')
  t.match(r.packages[0], { version: '1.0-1', section: 'net', installedSize: 42, description: 'command line tool for transferring data' })
  const wrong = (await rpc(urlOf(d), 'package.search', { query: 'curl', suite: 'oldstable', uri, arch: 'amd64' })).body.error
  t.equal(wrong.data.code, 'NOT_FOUND')
  t.equal(wrong.data.field, 'suite', 'a missing index names the suite')
  t.equal((await rpc(urlOf(d), 'package.search', { query: 'x', suite: '../../etc', uri })).body.error.data.field, 'suite')
})

t.test('a read-only socket makes loopback users read-only here too', async t => {
  const dir = await tempDir()
  const config = path.join(dir, 'osfarmd.json')
  await fs.writeFile(config, JSON.stringify({ socketMode: '0666', writeRequiresRoot: true, http: { listen: '127.0.0.1:0' } }))
  const d = await startDaemon({ dir, args: ['-c', config] })
  t.teardown(async () => { await d.stop(); await fs.rm(dir, { recursive: true, force: true }) })
  const rpcUrl = new URL('rpc', urlOf(d)).href
  const call = (method: string, params: unknown) => fetchAs(NOBODY, rpcUrl, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) })
  t.equal(JSON.parse((await call('daemon.version', {})).text).result.apiVersion, 1, 'reads are served')
  const write = JSON.parse((await call('image.remove', { id: 'x' })).text)
  t.equal(write.error.data.code, 'PERMISSION_DENIED', 'a write method is refused')
  t.match(write.error.message, /limits that to root/)
  t.equal((await rpc(urlOf(d), 'image.remove', { id: 'x' })).body.error.data.code, 'IMAGE_NOT_FOUND', 'root may write')
})

t.test('with a token: bearer or cookie, and loopback users keep their socket rights', async t => {
  const dir = await tempDir()
  const config = path.join(dir, 'osfarmd.json')
  await fs.writeFile(config, JSON.stringify({ http: { listen: '127.0.0.1:0', token: TOKEN } }))
  const d = await startDaemon({ dir, args: ['-c', config] })
  t.teardown(async () => { await d.stop(); await fs.rm(dir, { recursive: true, force: true }) })
  const rpcUrl = new URL('rpc', urlOf(d)).href
  const body = '{"jsonrpc":"2.0","id":1,"method":"daemon.version"}'
  const json = { 'Content-Type': 'application/json' }

  t.equal((await fetchAs(NOBODY, rpcUrl, { method: 'POST', headers: json, body })).status, 401, 'no token: 401')
  t.equal((await fetchAs(NOBODY, rpcUrl, { method: 'POST', headers: { ...json, Authorization: 'Bearer wrong-token-0000000000' }, body })).status, 401, 'a wrong token: 401')
  t.equal((await fetchAs(NOBODY, rpcUrl, { method: 'POST', headers: { ...json, Authorization: `Bearer ${TOKEN}` }, body })).status, 200, 'the token: 200')
  const session = await fetchAs(NOBODY, new URL('session', urlOf(d)).href, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` } })
  t.match(session.cookie, /osfarm_token=.*HttpOnly.*SameSite=Strict/, 'POST /session sets an HttpOnly cookie')
  const cookie = session.cookie!.split(';')[0]!
  t.equal((await fetchAs(NOBODY, rpcUrl, { method: 'POST', headers: { ...json, Cookie: cookie }, body })).status, 200, 'the cookie works like the header')
  t.equal((await rpc(urlOf(d), 'daemon.version')).status, 200, 'root on loopback needs no token')

  const open = await execa(process.execPath, [path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../daemon/main.js'), '--data', path.join(dir, 'other'), '--socket', path.join(dir, 'other.sock'), '--http', '0.0.0.0:0'], { reject: false })
  t.equal(open.exitCode, 78, 'a non-loopback address without a token is a config error')
  t.match(open.stderr, /http\.listen 0\.0\.0\.0:0 is not a loopback address: set http\.token/)
})

t.test('the console: a bad spec, a real build, the repository, downloads', async t => {
  const d = await startDaemon({ args: ['--http', '127.0.0.1:0'] })
  t.teardown(() => cleanup(t, d))
  const base = urlOf(d)
  const { page, errors } = await browser(t)

  await t.test('a bad spec shows the daemon\'s errors beside the fields', async t => {
    await page.goto(new URL('editor', base).href)
    await page.getByTestId('spec-name').fill('web-bad')
    await page.getByRole('button', { name: 'Add a file' }).click()
    await page.getByTestId('file-0-path').fill('../escape')
    await page.getByTestId('file-0-content').fill('x\n')
    await page.getByTestId('packages-input').fill('curl;rm')
    await page.getByTestId('packages-input').press('Enter')
    await page.getByTestId('spec-size').fill('1M')
    await waitText(page.getByTestId('spec-preview'), /<package>curl;rm<\/package>/)
    await page.getByTestId('check').click()
    t.match(await fieldError(page, page.getByTestId('file-0-path')), /"\.\.\/escape" must be absolute/, 'the path error is under the path')
    t.match(await fieldError(page, page.getByTestId('packages-input')), /packages\[0\]: "curl;rm" is not a valid package name/, 'the package error is under the packages')
    t.match(await fieldError(page, page.getByTestId('spec-size')), /at least 32 MiB/, 'the size error is under the size')
    t.match(await waitText(page.getByTestId('spec-issues'), /line \d+/), /files\[0\]\.path \(line \d+\)/, 'XML issues carry their line')
    t.ok(await page.locator('[data-testid=spec-preview] div[style*="red"]').count() > 0, 'the XML lines at fault are marked')
    await shot(page, 'editor-errors')

    // The same spec as JSON, submitted for building: image.build refuses it with the same errors.
    await page.getByText('JSON', { exact: true }).first().click()
    await waitText(page.getByTestId('spec-preview'), /"packages": \[/)
    await page.getByTestId('build').click()
    t.match(await fieldError(page, page.getByTestId('file-0-path')), /must be absolute/, 'image.build: the path error')
    t.equal(new URL(page.url()).pathname, '/editor', 'no job was started')
    t.same((await rpc(base, 'job.list')).body.result, [], 'the daemon has no job')
  })

  let built: any
  await t.test('a spec written in the editor builds, with live progress', async t => {
    await page.goto(new URL('editor', base).href)
    await page.getByTestId('spec-name').fill('web-minbase')
    await page.getByTestId('spec-size').fill('512M')
    // Package search reads the host mirror's own index.
    await page.getByTestId('package-query').fill('openssh-serv')
    await waitText(page.getByTestId('package-results'), /openssh-server/, 120_000)
    await page.getByRole('button', { name: 'Add a file' }).click()
    await page.getByTestId('file-0-path').fill('/etc/motd')
    await page.getByTestId('file-0-content').fill('built from the web console\n')
    await page.getByTestId('labels-input').fill('channel=stable')
    await page.getByTestId('labels-input').press('Enter')
    const xml = await waitText(page.getByTestId('spec-preview'), /<file path="\/etc\/motd" mode="0644" owner="root:root">built from the web console[\s\S]*<label>channel=stable<\/label>/)
    t.match(xml, /<image name="web-minbase">[\s\S]*<size>512M<\/size>/, 'the preview shows the XML to submit')
    await page.getByTestId('check').click()
    t.match(await waitText(page.getByTestId('spec-plan'), /2 layers/), /web-minbase: 2 layers, 0 already built/, 'check plans base and files layers')
    await shot(page, 'editor')

    await page.getByTestId('build').click()
    await page.waitForURL(/\/jobs\/[0-9a-f]+$/)
    const jobId = page.url().split('/').pop()!
    const detail = page.getByTestId('job-detail')
    await waitText(detail, /layer 1 (snapshot|bootstrap|mkfs)/, 30_000)
    t.equal(await page.getByTestId('job-state').textContent(), 'running', 'progress arrives while the job runs')
    await waitText(page.getByTestId('job-log'), /\S/, 60_000)
    await shot(page, 'jobs-running')
    await waitText(page.getByTestId('job-state'), /^(done|failed|cancelled)$/, BUILD_TIMEOUT_MS)
    const state = await page.getByTestId('job-state').textContent()
    if (state !== 'done') t.fail(`the build ended ${state}: ${await page.getByTestId('job-error').textContent().catch(() => '')}`)
    t.match(await waitText(page.getByTestId('build-result'), /files/), /web-minbase/, 'the result names the image and its layers')
    await shot(page, 'jobs')
    built = (await rpc(base, 'job.get', { id: jobId })).body.result.result
    t.equal(built.layers.length, 2)
    t.same(built.image.labels, ['channel=stable'], 'with the labels given in the editor')
  })

  await t.test('the image is in the repository and downloads as raw and qcow2', async t => {
    if (!built) { t.fail('no image was built'); return }
    await page.getByTestId('nav-images').click()
    const row = page.getByTestId('image-web-minbase')
    await row.waitFor()
    const text = (await row.textContent())!
    t.match(text, /build/, 'origin')
    t.match(text, /512 MiB/, 'size')
    t.match(text, /2 layers/, 'layers')
    t.match(text, built.image.root.slice(0, 16), 'content root')
    t.match(await row.getByTestId('image-labels').textContent(), /channel=stable/, 'labels')
    await shot(page, 'images')

    // Labels change from the repository (this host built the image).
    await row.getByRole('button', { name: 'actions for web-minbase' }).click()
    await page.getByRole('menuitem', { name: 'Change labels…' }).click()
    await page.getByTestId('relabel-input').fill('team=web')
    await page.getByTestId('relabel-input').press('Enter')
    await page.getByTestId('relabel-save').click()
    t.match(await waitText(row.getByTestId('image-labels'), /team=web/), /channel=stable.*team=web|team=web.*channel=stable/, 'the new label shows')
    t.same((await rpc(base, 'image.get', { id: built.image.id })).body.result.labels.sort(), ['channel=stable', 'team=web'], 'and is the image\'s')

    const dir = await tempDir('osfarm-web-dl-')
    t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
    const [qcow] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), row.getByTestId('download-qcow2').click()])
    t.equal(qcow.suggestedFilename(), 'web-minbase.qcow2')
    const qcowPath = path.join(dir, 'web-minbase.qcow2')
    await qcow.saveAs(qcowPath)
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', qcowPath])).stdout)
    t.equal(info.format, 'qcow2', 'a qcow2 file')
    t.equal(info['virtual-size'], built.image.size, 'of the image\'s size')

    const [raw] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), row.getByTestId('download-raw').click()])
    const rawPath = path.join(dir, raw.suggestedFilename())
    await raw.saveAs(rawPath)
    t.equal((await fs.stat(rawPath)).size, built.image.size, 'the raw download is the whole image')
    t.equal((await debugfsRead(rawPath, '/etc/motd'))?.toString(), 'built from the web console\n', 'and holds the file written in the editor')
    const ranged = await fetch(new URL(`images/${built.image.id}/download?format=raw`, base), { headers: { Range: 'bytes=1024-2047' } })
    t.equal(ranged.status, 206, 'raw downloads resume with ranges')
    t.equal((await ranged.arrayBuffer()).byteLength, 1024)
  })
  t.same(errors, [], 'no script error in the page')
})

t.test('the console with a fleet: peers, holders, a fetch with live progress', async t => {
  const { bootstrap } = await startTestnet(t.teardown)
  const a = await startDaemon({ args: ['--http', '127.0.0.1:0'] })
  const b = await startDaemon()
  for (const d of [a, b]) t.teardown(async () => { await d.stop('SIGKILL'); await fs.rm(d.dir, { recursive: true, force: true }) })
  const keyB = (await joinFleet([a, b], bootstrap)).keys[1]!
  const dir = await tempDir('osfarm-web-pair-')
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const pair = await makeImagePair(dir, 16384)
  await a.ctlJson('image', 'import', pair.base, '--name', 'base')
  await b.ctlJson('image', 'import', pair.base, '--name', 'base')
  const derived = await b.ctlJson('image', 'import', pair.derived, '--name', 'derived', '--label', 'stage=web')
  await waitPeers(a, 1)

  const base = urlOf(a)
  const { page, errors } = await browser(t)
  await page.goto(new URL('fleet', base).href)
  const peers = page.getByTestId('peers-table')
  t.match(await waitText(peers, new RegExp(keyB.slice(0, 12)), 30_000), os.hostname(), 'the peer is listed with its host')
  const adverts = page.getByTestId('adverts-table')
  t.match(await waitText(adverts, /derived/, 30_000), /stage=web/, 'with the builder\'s labels')
  await shot(page, 'fleet')
  await adverts.getByRole('row', { name: /derived/ }).getByRole('button', { name: 'Fetch' }).click()
  await page.waitForURL(/\/jobs\/[0-9a-f]+$/)
  await waitText(page.getByTestId('job-state'), /^done$/, 120_000)
  const stats = await waitText(page.getByTestId('fetch-result'), /reused in place/)
  t.match(stats, /received\d+ blocks/, 'the fetch shows blocks received')
  await shot(page, 'jobs-fetch')
  const images = (await rpc(base, 'image.list')).body.result
  t.ok(images.some((i: any) => i.root === derived.root && i.origin === 'fetch'), 'the fetched image is registered')

  await page.getByTestId('nav-images').click()
  const row = page.getByTestId('image-base')
  t.match(await waitText(row, new RegExp(`this host.*${os.hostname()}`), 15_000), /this host/, 'the repository shows which fleet hosts hold an image')
  await page.getByTestId('nav-fleet').click()
  await waitText(page.getByTestId('peers-table'), /KiB|MiB/)
  await shot(page, 'fleet-after-fetch')
  t.same(errors, [], 'no script error in the page')
})
