// What the local API (rpc/, http/) sees of the daemon: its services, each by the interface it
// exports. The Daemon implements it; handlers call services and reach no further.

import type { DaemonStatus } from '../protocol/rpc.js'
import type { AdvertBook } from './adverts/advert-book.js'
import type { BuildService } from './builder/build-service.js'
import type { RebuildService } from './builder/rebuild-service.js'
import type { PackageIndex } from './console/package-index.js'
import type { FetchService } from './fetch/fetch-service.js'
import type { FleetService } from './fleet/fleet-service.js'
import type { ImageService } from './images/images.js'
import type { JobManager } from './jobs/jobs.js'
import type { Metrics } from './metrics.js'
import type { PrestageService } from './prestage/prestage-service.js'
import type { SeedService } from './seed/seed-service.js'
import type { LayerStore } from './store/layer-store.js'

export interface Services {
  readonly version: string
  readonly store: LayerStore
  readonly jobs: JobManager
  readonly images: ImageService
  readonly builds: BuildService
  readonly rebuilds: RebuildService
  readonly fleet: FleetService
  readonly adverts: AdvertBook
  readonly fetches: FetchService
  readonly seeds: SeedService
  readonly prestages: PrestageService
  readonly packages: PackageIndex
  readonly metrics: Metrics
  status (): Promise<DaemonStatus>
}
