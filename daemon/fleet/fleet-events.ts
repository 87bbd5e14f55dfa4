// The events a FleetSwarm emits, with their arguments: what the fetch, seed and pre-staging
// services listen to.

import type { Advert, MessageMap } from '../../protocol/wire.js'
import type { PeerSession } from './peer-session.js'

// What the swarm tells the services, each with its arguments.
export interface FleetEvents {
  // A key off the allow-list tried to connect (every attempt; logged once per key).
  refused: [key: Buffer]
  // A session opened with an allowed peer, or closed.
  peer: [session: PeerSession]
  'peer-closed': [session: PeerSession]
  // `session` holds (an advert) or now holds part of (a Have: blocks from `start`, `count` of
  // them) the image with root `rootHex`.
  holder: [rootHex: string, session: PeerSession, start?: number, count?: number]
  // `session` no longer offers the image.
  withdrawn: [rootHex: string, session: PeerSession]
  // A newer relabelling of an advert.
  revised: [advert: Advert]
  // Adverts heard of through peers (offers), new here.
  offer: [adverts: Advert[]]
  // Service messages, for whichever service listens.
  Stage: [session: PeerSession, body: MessageMap['Stage']]
  StageStatus: [session: PeerSession, body: MessageMap['StageStatus']]
  SeedDefaults: [session: PeerSession, body: MessageMap['SeedDefaults']]
}
