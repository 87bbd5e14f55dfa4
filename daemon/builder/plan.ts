// The layer plan: a spec becomes base → packages → files → scripts (→ boot), each step with a
// canonical description. A layer's key is BLAKE3("osfarm-layer" ‖ parent key ‖ canonical step),
// hex; the image's key is its top layer's key. Steps a spec leaves empty are not layers.
// The base and packages steps also hold the state of every apt repository suite they read
// (repo-state.ts), so a layer is reused only while its repositories are unchanged; the spec key
// is the same chain without those states: one spec, whatever the mirrors did since.

import { SPEC_INVALID } from '../../protocol/errors.js'
import { hash, hashParts, toHex } from '../blocks/hash.js'
import { canonicalJson } from './canonical.js'
import { flavours } from './flavours/index.js'
import type { BaseStep, HostInfo } from './flavours/flavour.js'
import type { ImageSpec } from './spec.js'
import type { RepoInput } from '../../protocol/rpc.js'
import type { RepoRef } from './repo-state.js'

// Bumped whenever a step's recipe changes what it writes, so old keys are not reused.
export const RECIPE = 5
// SOURCE_DATE_EPOCH and E2FSPROGS_FAKE_TIME of every build: 2024-01-01T00:00:00Z.
export const BUILD_EPOCH = 1704067200
// The kernel command line of a bootable image (the root filesystem is the whole disk).
export const BOOT_APPEND = 'root=/dev/vda ro console=ttyS0 net.ifnames=0'

export const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'ext4', 'crc32c_generic']

export type StepKind = 'base' | 'packages' | 'files' | 'scripts' | 'boot'

export interface PlannedLayer {
  index: number
  kind: StepKind
  key: string
  parent?: string
  // Hashed into the key.
  step: Record<string, unknown>
}

export interface Plan {
  spec: ImageSpec
  layers: PlannedLayer[]
  // The top layer's key.
  key: string
  base: BaseStep
  // Image path → the daemon-owned copy of that file's content, for the files step.
  sources: Map<string, string>
  // The key chain without the repositories' states.
  specKey: string
  // The repository states in the keys, each with the lowest layer that read it.
  inputs: RepoInput[]
  // Repositories that could not be checked (their newest seen state is in the key).
  unreachable: string[]
}

// The states of the given repositories (repo-state.ts RepoStates.resolve).
export type InputResolver = (refs: RepoRef[]) => Promise<{ inputs: RepoInput[], unreachable: string[] }>

export function layerKey (parent: string | undefined, step: Record<string, unknown>): string {
  return toHex(hashParts(['osfarm-layer\n', parent ?? '', '\n', canonicalJson(step)]))
}

// The spec's sources must be resolved (build/sources.ts): files come from daemon-owned copies.
export async function planBuild (spec: ImageSpec, host: HostInfo, resolveInputs?: InputResolver): Promise<Plan> {
  const flavour = flavours.get(spec.flavour)
  if (!flavour) throw SPEC_INVALID(`flavour: unknown flavour ${spec.flavour}`)
  const base = await flavour.baseStep(spec, host)
  const steps: Array<[StepKind, Record<string, unknown>]> = []
  steps.push(['base', { kind: 'base', recipe: RECIPE, epoch: BUILD_EPOCH, size: spec.size, filesystem: spec.filesystem, ...base.step }])

  const packages = [...new Set([...spec.packages, ...(spec.bootable ? flavour.bootPackages(spec) : [])])].sort()
  if (packages.length || spec.repositories.length) {
    steps.push(['packages', {
      kind: 'packages',
      recipe: RECIPE,
      packages,
      // A bootable image's initramfs holds only what a virtio disk boot needs: small, so quick
      // to make and to unpack under emulation.
      ...(spec.bootable ? { initramfs: INITRAMFS_MODULES } : {}),
      repositories: spec.repositories.map(r => ({ uri: r.uri, suites: r.suites, components: r.components, key: r.key ? toHex(hash(Buffer.from(r.key))) : null }))
    }])
  }

  const sources = new Map<string, string>()
  if (spec.files.length) {
    const files = []
    for (const f of [...spec.files].sort((a, b) => (a.path < b.path ? -1 : 1))) {
      if (!f.blob || f.source === undefined) throw new Error(`files: ${f.path} was not resolved to a copy before planning`)
      sources.set(f.path, f.source)
      files.push({ path: f.path, mode: f.mode, owner: f.owner, group: f.group, size: f.blob.size, blake3: f.blob.blake3 })
    }
    steps.push(['files', { kind: 'files', recipe: RECIPE, files }])
  }

  if (spec.scripts.length) {
    steps.push(['scripts', { kind: 'scripts', recipe: RECIPE, scripts: spec.scripts.map(s => ({ name: s.name, content: s.content })) }])
  }

  if (spec.bootable) steps.push(['boot', { kind: 'boot', recipe: RECIPE, append: BOOT_APPEND, hostname: 'osfarm' }])

  // What each step reads: the base its mirror's suite; packages that too (the image's own
  // sources.list names it) and the spec's repositories.
  const baseReads = base.reads ?? []
  const reads = (kind: StepKind): RepoRef[] => kind === 'base'
    ? baseReads
    : kind === 'packages' ? [...baseReads, ...spec.repositories.flatMap(r => r.suites.map(suite => ({ uri: r.uri, suite })))] : []
  const wanted = steps.flatMap(([kind]) => reads(kind))
  const resolved = resolveInputs && wanted.length ? await resolveInputs(wanted) : { inputs: [], unreachable: [] }
  const stateOf = new Map(resolved.inputs.map(i => [`${i.uri.replace(/\/+$/, '')} ${i.suite}`, i]))

  const layers: PlannedLayer[] = []
  const inputs: RepoInput[] = []
  let parent: string | undefined
  let specParent: string | undefined
  for (const [kind, step] of steps) {
    specParent = layerKey(specParent, step)
    const states: Record<string, string> = {}
    for (const r of reads(kind)) {
      const name = `${r.uri.replace(/\/+$/, '')} ${r.suite}`
      const state = stateOf.get(name)
      if (!state) continue
      states[name] = state.hash
      if (!inputs.some(i => i.uri === state.uri && i.suite === state.suite)) inputs.push({ ...state, layer: layers.length })
    }
    const keyed = Object.keys(states).length ? { ...step, repositoryStates: states } : step
    const key = layerKey(parent, keyed)
    layers.push({ index: layers.length, kind, key, ...(parent ? { parent } : {}), step: keyed })
    parent = key
  }
  return { spec, layers, key: parent!, base, sources, specKey: specParent!, inputs, unreachable: resolved.unreachable }
}
