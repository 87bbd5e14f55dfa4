// rootfs: a distribution's root filesystem tarball as the base (an EL cloud rootfs, Alpine's
// minirootfs, ...). The base key holds the tarball's hash, not its path.

import fs from 'node:fs'
import { Blake3Hasher } from '../../blocks/hash.js'
import { SPEC_INVALID } from '../../../protocol/errors.js'
import { extract } from '../tools/tar.js'
import type { Flavour } from './flavour.js'

// Package names of rpm, apk and deb worlds, without any shell metacharacter.
const ANY_PACKAGE = /^[A-Za-z0-9][A-Za-z0-9_+.:~=-]{0,127}$/

export const rootfs: Flavour = {
  name: 'rootfs',
  packageName: ANY_PACKAGE,
  check (spec, report) {
    if (spec.rootfs === undefined) report('rootfs', 'is required for the rootfs flavour (a tarball of the root filesystem)')
    if (spec.bootable) report('bootable', 'is not supported for the rootfs flavour yet (osfarm cannot pick its kernel packages)')
  },
  async baseStep (spec) {
    const tarball = spec.rootfs!
    const digest = await hashFile(tarball).catch(err => {
      throw SPEC_INVALID(`rootfs: cannot read ${tarball}: ${(err as Error).message}`)
    })
    return {
      step: { flavour: 'rootfs', tarball: digest, arch: spec.arch },
      build: ctx => extract(tarball, ctx.dir, ctx.signal, ctx.onLine)
    }
  },
  bootPackages () {
    return []
  }
}

export async function hashFile (file: string): Promise<string> {
  const h = new Blake3Hasher()
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer)
  return h.digest('hex')
}
