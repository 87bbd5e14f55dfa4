// Which seed policy's upload limit governs serving an image, and the limiter's count.

import t from 'tap'
import { newPolicy, strictestUploadPolicy, uploadPolicy } from '../daemon/seed/seed-policy.js'
import { RateLimiter } from '../daemon/fleet/rate-limiter.js'

const policy = (match: string, uploadLimit: number) => newPolicy({ match, uploadLimit }, 'host')

t.test('the most generous policy wanting an image sets its upload limit; no limit beats any', async t => {
  const slow = policy('a-*', 1_000_000)
  const fast = policy('a-*', 5_000_000)
  const open = policy('*', 0)
  t.equal(uploadPolicy([]), undefined, 'an image no policy wants: no seeding limit')
  t.equal(uploadPolicy([slow]), slow)
  t.equal(uploadPolicy([slow, fast]), fast)
  t.equal(uploadPolicy([fast, open, slow]), open)
  t.equal(strictestUploadPolicy([fast, open, slow]), slow, 'a request naming no image: the strictest')
  t.equal(strictestUploadPolicy([open]), undefined)
})

t.test('a limiter counts what it lets through, limited or not', async t => {
  const open = new RateLimiter(0)
  await open.take(1000)
  t.equal(open.reserve(500), 0)
  t.equal(open.bytes, 1500)
  const limited = new RateLimiter(100 << 20)
  await limited.take(4096)
  t.equal(limited.bytes, 4096)
})
