// The advert book: the adverts this host sends for its images (its own, signed here, and the
// builder's for fetched ones), saved in the catalog, and relabelling: only an image's builder
// signs the next revision; a revision heard from the fleet replaces the older one here.

import type { KeyPair } from 'hyperdht'
import { PERMISSION_DENIED } from '../../protocol/errors.js'
import type { ImageInfo } from '../../protocol/rpc.js'
import { supersedes, type Advert } from '../../protocol/wire.js'
import { checkLabels, dropLabels, mergeLabels, sameLabels } from '../images/labels.js'
import type { Catalog } from '../catalog/catalog.js'
import type { ImageService } from '../images/images.js'
import { signAdvert, type AdvertBody } from './sign-advert.js'

export type SerializedAdvert = Record<keyof Advert, string | number | string[] | null | undefined>

export interface AdvertBookDeps {
  catalog: Catalog
  images: ImageService
  keyPair: KeyPair
  // Sends adverts to the fleet (when a swarm is open).
  advertise: (adverts: Advert[]) => void
}

export class AdvertBook {
  readonly #d: AdvertBookDeps
  readonly #saved
  #relabels: Promise<unknown> = Promise.resolve()

  constructor (deps: AdvertBookDeps) {
    this.#d = deps
    this.#saved = deps.catalog.sublevel<SerializedAdvert>('adverts')
  }

  // An advert this host signs as the builder.
  sign (a: AdvertBody): Advert {
    return signAdvert(this.#d.keyPair, a)
  }

  // The advert this host sends for a local image (its builder's, for a fetched one).
  async get (rootHex: string): Promise<Advert | undefined> {
    const saved = await this.#saved.get(rootHex)
    return saved ? parseAdvert(saved) : undefined
  }

  async put (advert: Advert): Promise<void> {
    await this.#saved.put(advert.root.toString('hex'), serializeAdvert(advert))
  }

  async remove (rootHex: string): Promise<void> {
    await this.#saved.del(rootHex)
  }

  // The saved advert for an image, or a new one signed here.
  async advertFor (image: ImageInfo): Promise<Advert> {
    const saved = await this.get(image.root)
    if (saved) return saved
    const advert = this.sign({ root: Buffer.from(image.root, 'hex'), name: image.name, size: image.size, blockSize: image.blockSize, created: Date.parse(image.createdAt) || Date.now(), labels: image.labels ?? [], version: image.version, specKey: image.specKey ? Buffer.from(image.specKey, 'hex') : null })
    await this.put(advert)
    return advert
  }

  async all (): Promise<Advert[]> {
    const out: Advert[] = []
    for (const image of await this.#d.catalog.listImages()) out.push(await this.advertFor(image))
    return out
  }

  // Changes an image's labels. Labels are signed into the image's advert, so only its builder
  // can: the advert is signed again with the next revision, and every host that hears it
  // replaces the older one (holders update their copies' labels and pass it on).
  relabel (ref: string, change: { set: string[], remove: string[] }): Promise<ImageInfo> {
    return this.#relabelling(() => this.#relabel(ref, change))
  }

  // A relabelling heard from the fleet. For an image held here it replaces the saved advert and
  // the copies' labels, and this host advertises the new one from now on.
  revised (a: Advert): Promise<void> {
    return this.#relabelling(() => this.#onRevised(a))
  }

  // Relabellings, local and heard, one at a time: each reads the saved advert it replaces (two
  // at once would sign one revision twice, with different labels).
  #relabelling<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.#relabels.then(fn)
    this.#relabels = run.catch(() => {})
    return run
  }

  async #relabel (ref: string, change: { set: string[], remove: string[] }): Promise<ImageInfo> {
    const image = await this.#d.images.get(ref)
    const saved = await this.get(image.root)
    if (saved && !saved.builder.equals(this.#d.keyPair.publicKey)) {
      throw PERMISSION_DENIED(`image ${image.name} was built by host ${saved.builder.toString('hex').slice(0, 16)}: only that host can change its labels (they are signed into its advert)`)
    }
    const current = saved?.labels ?? image.labels ?? []
    const labels = checkLabels(mergeLabels(dropLabels(current, change.remove), checkLabels(change.set)))
    if (sameLabels(labels, current) && sameLabels(labels, image.labels ?? [])) return image
    // The advert first: a crash before the catalog is updated is mended by running it again.
    if (saved) {
      const next = this.sign({ root: saved.root, name: saved.name, size: saved.size, blockSize: saved.blockSize, created: saved.created ?? undefined, labels, revision: (saved.revision ?? 0) + 1, version: saved.version ?? null, specKey: saved.specKey ?? null })
      await this.put(next)
      this.#d.advertise([next])
    }
    return (await this.#labelImagesOf(image.root, labels)).find(i => i.id === image.id) ?? image
  }

  // Sets `labels` on every image here whose content is `root` (they share one advert).
  async #labelImagesOf (root: string, labels: string[]): Promise<ImageInfo[]> {
    const out: ImageInfo[] = []
    for (const i of await this.#d.catalog.listImages()) if (i.root === root) out.push(await this.#d.images.setLabels(i, labels))
    return out
  }

  async #onRevised (a: Advert): Promise<void> {
    const hex = a.root.toString('hex')
    const saved = await this.get(hex)
    if (!saved || !supersedes(a, saved)) return
    await this.put(a)
    await this.#labelImagesOf(hex, a.labels ?? [])
    this.#d.advertise([a])
  }
}

export function serializeAdvert (a: Advert): SerializedAdvert {
  return {
    root: a.root.toString('hex'),
    name: a.name,
    size: a.size,
    blockSize: a.blockSize,
    specKey: a.specKey ? a.specKey.toString('hex') : null,
    builder: a.builder.toString('hex'),
    signature: a.signature.toString('hex'),
    created: a.created ?? null,
    labels: a.labels ?? [],
    extSignature: a.extSignature ? a.extSignature.toString('hex') : null,
    revision: a.revision ?? null,
    revSignature: a.revSignature ? a.revSignature.toString('hex') : null,
    version: a.version ?? null,
    verSignature: a.verSignature ? a.verSignature.toString('hex') : null
  }
}

export function parseAdvert (s: SerializedAdvert): Advert {
  return {
    root: Buffer.from(s.root as string, 'hex'),
    name: s.name as string,
    size: s.size as number,
    blockSize: s.blockSize as number,
    specKey: s.specKey ? Buffer.from(s.specKey as string, 'hex') : null,
    builder: Buffer.from(s.builder as string, 'hex'),
    signature: Buffer.from(s.signature as string, 'hex'),
    ...(s.extSignature ? { created: s.created as number, labels: (s.labels as string[] | undefined) ?? [], extSignature: Buffer.from(s.extSignature as string, 'hex') } : {}),
    ...(s.revSignature ? { revision: s.revision as number, revSignature: Buffer.from(s.revSignature as string, 'hex') } : {}),
    ...(s.verSignature ? { version: s.version as number, verSignature: Buffer.from(s.verSignature as string, 'hex') } : {})
  }
}
