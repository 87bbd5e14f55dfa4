// Adverts heard of through peers (daemon/fleet/offer-book.ts) and relabellings
// (daemon/adverts/revisions.ts): new ones are passed on once, a newer revision replaces an older
// one and an older never undoes it, offers expire, and a signature that does not match is refused.

import t from 'tap'
import DHT from 'hyperdht'
import { OfferBook } from '../daemon/fleet/offer-book.js'
import { Revisions } from '../daemon/adverts/revisions.js'
import { checkAdvertSignatures } from '../daemon/adverts/sign-advert.js'
import { signedAdvert } from '../testing/adverts.js'

const kp = DHT.keyPair()

t.test('offers: new once, a newer revision again, forgotten after their time', async t => {
  let now = 0
  const book = new OfferBook(() => now)
  const v1 = signedAdvert(kp, [], null, 'app')
  const v2 = signedAdvert(kp, ['role=web'], 2, 'app')
  t.same(book.add([v1]), [v1], 'new: passed on')
  t.same(book.add([v1]), [], 'heard again: not passed on')
  t.same(book.add([v2]), [v2], 'a relabelling: passed on')
  t.same(book.add([v1]), [], 'the older one does not undo it')
  t.same(book.all(), [v2])
  now = 11 * 60_000
  t.same(book.all(), [], 'forgotten ten minutes after it was last heard')
  book.add([v1])
  book.remove(v1.root.toString('hex'))
  t.same(book.all(), [], 'removed once held here')
})

t.test('revisions: the newest relabelling is kept', async t => {
  const r = new Revisions()
  const v1 = signedAdvert(kp, [], 1, 'db')
  const v3 = signedAdvert(kp, ['x=y'], 3, 'db')
  t.same(r.remember(v1), { advert: v1, revised: true })
  t.same(r.remember(v3), { advert: v3, revised: true })
  t.same(r.remember(v1), { advert: v3, revised: false }, 'an older copy returns the newest')
  t.equal(r.newest(v1), v3)
})

t.test('an advert whose signature does not match is refused', async t => {
  const a = signedAdvert(kp, [], null, 'ok')
  t.doesNotThrow(() => checkAdvertSignatures(a))
  const forged = { ...a, name: 'other' }
  t.throws(() => checkAdvertSignatures(forged), { code: 'PROTOCOL_ERROR' })
})
