// Ubuntu: the same tools with Ubuntu's archive keyring; the spec must name the mirror (a
// Debian host's apt has none).

import fs from 'node:fs/promises'
import { TOOL_MISSING } from '../../../protocol/errors.js'
import { debianStyleBase } from './debian.js'
import { DEBIAN_PACKAGE, type Flavour } from './flavour.js'

export const UBUNTU_KEYRING = '/usr/share/keyrings/ubuntu-archive-keyring.gpg'

export const ubuntu: Flavour = {
  name: 'ubuntu',
  packageName: DEBIAN_PACKAGE,
  check (spec, report) {
    if (!spec.release) report('release', 'is required for the ubuntu flavour (e.g. noble)')
    if (spec.mirror === undefined) report('mirror', 'is required for the ubuntu flavour (this host\'s apt mirror serves Debian)')
    if (spec.rootfs !== undefined) report('rootfs', 'is only for the rootfs flavour')
  },
  async baseStep (spec, host) {
    const base = debianStyleBase('ubuntu', spec, host, spec.mirror!, UBUNTU_KEYRING)
    return {
      step: base.step,
      ...(base.reads ? { reads: base.reads } : {}),
      async build (ctx) {
        if (!await fs.access(UBUNTU_KEYRING).then(() => true, () => false)) {
          throw TOOL_MISSING(`Ubuntu's archive keyring ${UBUNTU_KEYRING} is missing (apt-get install ubuntu-keyring)`)
        }
        await base.build(ctx)
      }
    }
  },
  bootPackages () {
    return ['linux-image-virtual', 'systemd-sysv', 'udev']
  }
}
