// A flavour is a plug-in: how a spec's base layer is made (a root tree in a directory) and
// which packages make an image bootable. The package tool is found in the image itself.

import type { ImageSpec } from '../spec.js'
import type { AptSource } from '../host-mirror.js'

export interface BaseContext {
  // An empty directory to fill with the image's root tree.
  dir: string
  epoch: number
  signal?: AbortSignal
  onLine: (line: string) => void
}

export interface HostInfo {
  // The host's apt sources, for the default mirror.
  sources: AptSource[]
  // Whether mmdebstrap is installed (else debootstrap).
  mmdebstrap: boolean
}

export interface BaseStep {
  // The canonical description of the base, hashed into its key.
  step: Record<string, unknown>
  // The apt repository suites the base is made from (their states go into its key).
  reads?: Array<{ uri: string, suite: string }>
  build (ctx: BaseContext): Promise<void>
}

export interface Flavour {
  readonly name: string
  readonly packageName: RegExp
  // Static checks beyond the common ones; report(field, message) for each problem.
  check (spec: ImageSpec, report: (field: string, message: string) => void): void
  baseStep (spec: ImageSpec, host: HostInfo): Promise<BaseStep>
  bootPackages (spec: ImageSpec): string[]
}

// Debian policy: lower case, digits, + - . ; an optional :arch and =version.
export const DEBIAN_PACKAGE = /^[a-z0-9][a-z0-9+.-]{0,127}(?::[a-z0-9-]{1,16})?(?:=[A-Za-z0-9.+~:-]{1,64})?$/
