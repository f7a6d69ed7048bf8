// Sends every Segment call type with the official Node SDK (@segment/analytics-node) to
// Meridian's Segment-compatible HTTP API, exactly as a storefront backend would: the SDK is
// unchanged, only `host` points at the local server. Reads a JSON job on stdin:
//   {"host": "http://127.0.0.1:PORT", "writeKey": "mk_...", "shoppers": [{"email","userId",
//    "anonymousId","prefix"}], "jurisdiction": "US-CA"}
// and prints one JSON line: {"sent": N, "messageIds": [...], "errors": [...], "responses": [...]}.
import { Analytics } from '@segment/analytics-node'

const job = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const errors = []
const responses = []
const analytics = new Analytics({
  writeKey: job.writeKey,
  host: job.host,
  flushAt: 20,
  flushInterval: 200,
  maxRetries: 2,
})
analytics.on('error', (err) => errors.push(String(err && (err.reason || err.message || err.code || err))))
analytics.on('http_request', (req) => responses.push({ url: req.url, method: req.method }))

const messageIds = []
const context = { storefront: { id: 'store-1', country: job.jurisdiction }, locale: 'en-US' }
for (const s of job.shoppers) {
  const id = (kind) => {
    const m = `${s.prefix}-${kind}`
    messageIds.push(m)
    return m
  }
  const common = { anonymousId: s.anonymousId, context }
  analytics.identify({ ...common, userId: s.userId, messageId: id('identify'), traits: { email: s.email, name: s.name, plan: 'gold' } })
  analytics.track({ ...common, userId: s.userId, messageId: id('track'), event: 'Order Completed', properties: { order_id: `o-${s.prefix}`, revenue: 19.99, currency: 'EUR', note: `gift for ${s.name}` } })
  analytics.page({ ...common, messageId: id('page'), name: 'Checkout', properties: { url: 'https://shop.example/checkout' } })
  analytics.screen({ ...common, messageId: id('screen'), name: 'Cart' })
  analytics.group({ ...common, userId: s.userId, messageId: id('group'), groupId: 'g-1', traits: { name: 'Acme' } })
  analytics.alias({ userId: s.userId, previousId: s.anonymousId, messageId: id('alias'), context })
}
await analytics.closeAndFlush({ timeout: 30000 })
console.log(JSON.stringify({ sent: messageIds.length, messageIds, errors, responses: responses.length }))
