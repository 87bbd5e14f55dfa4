// Debian: mmdebstrap (debootstrap where it is missing) from the spec's mirror, else from the
// mirror this host's apt uses.

import { SPEC_INVALID } from '../../../protocol/errors.js'
import { pickMirror } from '../host-mirror.js'
import { bootstrap } from '../tools/mmdebstrap.js'
import { DEBIAN_PACKAGE, type Flavour, type HostInfo, type BaseStep } from './flavour.js'
import type { ImageSpec } from '../spec.js'

export const debian: Flavour = {
  name: 'debian',
  packageName: DEBIAN_PACKAGE,
  check (spec, report) {
    if (!spec.release) report('release', 'is required for the debian flavour (e.g. bookworm)')
    if (spec.rootfs !== undefined) report('rootfs', 'is only for the rootfs flavour')
  },
  async baseStep (spec, host) {
    const mirror = spec.mirror ?? pickMirror(host.sources, spec.release)
    if (!mirror) throw SPEC_INVALID(`mirror: this host's apt has no source for ${spec.release}; name a mirror in the spec`)
    return debianStyleBase('debian', spec, host, mirror)
  },
  bootPackages (spec) {
    return [`linux-image-${spec.arch}`, 'systemd-sysv', 'udev']
  }
}

export function debianStyleBase (flavour: string, spec: ImageSpec, host: HostInfo, mirror: string, keyring?: string): BaseStep {
  const tool = host.mmdebstrap ? 'mmdebstrap' : 'debootstrap'
  return {
    step: { flavour, tool, release: spec.release, arch: spec.arch, variant: spec.variant, mirror, components: spec.components, ...(keyring ? { keyring } : {}) },
    reads: [{ uri: mirror, suite: spec.release }],
    build: ctx => bootstrap(tool, {
      release: spec.release,
      dir: ctx.dir,
      mirror,
      variant: spec.variant,
      arch: spec.arch,
      components: spec.components,
      ...(keyring ? { keyring } : {}),
      epoch: ctx.epoch,
      ...(ctx.signal ? { signal: ctx.signal } : {}),
      onLine: ctx.onLine
    })
  }
}
