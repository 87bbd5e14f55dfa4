// A real signed apt repository on 127.0.0.1: a GnuPG key made for the test, packages made with
// dpkg-deb, indexes and Release by apt-ftparchive, InRelease clearsigned by gpg, served by a
// plain HTTP server that counts its requests. publish() replaces what the suite holds.

import http from 'node:http'
import fs from 'node:fs/promises'
import path from 'node:path'
import { execa } from 'execa'

export interface AptRepo {
  uri: string
  suite: string
  // The ASCII-armored public key the repository is signed with.
  key: string
  // Requests served so far.
  requests (): number
  // The suite holds exactly these packages (name → version), each installing
  // /usr/share/NAME/version with the version in it.
  publish (packages: Record<string, string>): Promise<void>
  stop (): Promise<void>
  start (): Promise<void>
}

export async function createAptRepo (dir: string, suite = 'osfarm-test'): Promise<AptRepo> {
  const gnupg = path.join(dir, 'gnupg')
  const root = path.join(dir, 'repo')
  await fs.mkdir(gnupg, { recursive: true, mode: 0o700 })
  await fs.mkdir(root, { recursive: true })
  const gpg = (args: string[], input?: string) => execa('gpg', ['--homedir', gnupg, '--batch', '--yes', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], input === undefined ? {} : { input })
  await gpg(['--quick-gen-key', 'osfarm test repository <repo@osfarm.invalid>', 'ed25519', 'sign', 'never'])
  const key = String((await gpg(['--armor', '--export', 'repo@osfarm.invalid'])).stdout) + '\n'
  let served = 0
  const server = http.createServer((req, res) => {
    served++
    const rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    const file = path.join(root, path.normalize(rel))
    if (!file.startsWith(root)) { res.writeHead(403).end(); return }
    fs.readFile(file).then(data => { res.writeHead(200, { 'content-length': data.length }); res.end(req.method === 'HEAD' ? undefined : data) }, () => { res.writeHead(404).end() })
  })
  let port = 0
  const listen = () => new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => { port = (server.address() as { port: number }).port; resolve() })
  })
  await listen()
  const repo: AptRepo = {
    uri: `http://127.0.0.1:${port}`,
    suite,
    key,
    requests: () => served,
    async publish (packages) {
      const pool = path.join(root, 'pool')
      const dists = path.join(root, 'dists', suite)
      await fs.rm(pool, { recursive: true, force: true })
      await fs.rm(dists, { recursive: true, force: true })
      await fs.mkdir(pool, { recursive: true })
      await fs.mkdir(path.join(dists, 'main', 'binary-amd64'), { recursive: true })
      for (const [name, version] of Object.entries(packages)) {
        const tree = path.join(dir, 'build', `${name}-${version}`)
        await fs.rm(tree, { recursive: true, force: true })
        await fs.mkdir(path.join(tree, 'DEBIAN'), { recursive: true })
        await fs.mkdir(path.join(tree, 'usr', 'share', name), { recursive: true })
        await fs.writeFile(path.join(tree, 'DEBIAN', 'control'), `Package: ${name}\nVersion: ${version}\nArchitecture: all\nMaintainer: osfarm tests <repo@osfarm.invalid>\nDescription: osfarm test package\n a package of the test repository\n`)
        await fs.writeFile(path.join(tree, 'usr', 'share', name, 'version'), `${version}\n`)
        await execa('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', tree, path.join(pool, `${name}_${version}_all.deb`)], { env: { SOURCE_DATE_EPOCH: '1704067200' } })
      }
      const packagesFile = String((await execa('apt-ftparchive', ['packages', 'pool'], { cwd: root })).stdout) + '\n'
      await fs.writeFile(path.join(dists, 'main', 'binary-amd64', 'Packages'), packagesFile)
      await execa('gzip', ['-9nk', path.join(dists, 'main', 'binary-amd64', 'Packages')])
      const release = String((await execa('apt-ftparchive', [
        '-o', `APT::FTPArchive::Release::Suite=${suite}`, '-o', `APT::FTPArchive::Release::Codename=${suite}`,
        '-o', 'APT::FTPArchive::Release::Components=main', '-o', 'APT::FTPArchive::Release::Architectures=amd64',
        'release', '.'
      ], { cwd: dists })).stdout) + '\n'
      await fs.writeFile(path.join(dists, 'Release'), release)
      await gpg(['--local-user', 'repo@osfarm.invalid', '--clearsign', '--output', path.join(dists, 'InRelease'), path.join(dists, 'Release')])
      await gpg(['--local-user', 'repo@osfarm.invalid', '--armor', '--detach-sign', '--output', path.join(dists, 'Release.gpg'), path.join(dists, 'Release')])
    },
    async stop () {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    },
    start: listen
  }
  return repo
}
