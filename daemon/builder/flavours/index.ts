// The flavour registry: a new flavour is one module and one line here.

import { debian } from './debian.js'
import { ubuntu } from './ubuntu.js'
import { rootfs } from './rootfs.js'
import type { Flavour } from './flavour.js'

export const flavours: ReadonlyMap<string, Flavour> = new Map([debian, ubuntu, rootfs].map(f => [f.name, f]))
