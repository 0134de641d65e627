// Produce and consume in a consumer group against eventflowd, with kafkajs.
//
// Usage: node groups.js BOOTSTRAP TOPIC GROUP RECORDS
//
// kafkajs is a JavaScript client with its own implementation of the protocol (and older
// versions of several APIs than librdkafka or kafka-python pick), so it checks the broker's
// encoding independently. The script:
//
// 1. creates TOPIC (4 partitions) with the admin client;
// 2. produces RECORDS records (a multiple of 100) with keys and headers, in batches of
//    100, acknowledged by all replicas (acks -1);
// 3. consumes them with two members of GROUP (consumer.run with eachMessage; kafkajs commits
//    the offsets it resolved after each batch, and before it rejoins a rebalancing group).
//    A gate holds the members at a record count so that each step lands while records are
//    left: member A starts alone and stops at a quarter; member B joins and the partitions
//    are split; the script prints {"step": "both-active", ...} and waits for a line on stdin
//    (the caller looks at the group through the native protocol); both go on to three
//    quarters; A disconnects (leaves the group); B takes every partition and reads the rest;
// 4. checks that every record was delivered exactly once, with its key and headers;
// 5. looks at the group with the admin client: listed, described (Empty), committed offsets
//    equal to the end offsets; resets them to the earliest offset and sets one; deletes the
//    group and the topic.
//
// Prints one JSON line per step on stdout (kafkajs's own log goes to stderr); any unexpected
// answer throws, so the exit status is non-zero.

'use strict'

const readline = require('readline')
const { Kafka, logLevel, Partitioners } = require('kafkajs')

const TIMEOUT_MS = 20000
const PARTITIONS = 4
const BATCH = 100

const say = fields => process.stdout.write(JSON.stringify(fields) + '\n')

const expect = (cond, what) => {
  if (!cond) throw new Error(`expectation failed: ${what}`)
}

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()

// kafkajs logs through console.info by default, which is stdout: keep stdout for the steps.
const logCreator = () => ({ namespace, label, log }) => {
  process.stderr.write(`${label} [${namespace}] ${JSON.stringify(log)}\n`)
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function waitUntil(what, cond, members) {
  const deadline = Date.now() + TIMEOUT_MS
  while (!cond()) {
    for (const m of members) {
      if (m.error) throw new Error(`${m.name} failed: ${m.error.stack || m.error}`)
    }
    expect(Date.now() < deadline, `timed out waiting until ${what}`)
    await sleep(50)
  }
}

/** A group member that records every message it is given. */
class Member {
  constructor(kafka, name, topic, group, seen, gate) {
    this.name = name
    this.gate = gate
    this.leaving = false
    this.topic = topic
    this.seen = seen
    this.count = 0
    this.error = null
    this.assigned = new Set()
    /** The partitions it read from. */
    this.partitions = new Set()
    this.consumer = kafka.consumer({
      groupId: group,
      sessionTimeout: 6000,
      rebalanceTimeout: 10000,
      heartbeatInterval: 300,
      maxWaitTimeInMs: 100,
      retry: { retries: 3 },
    })
    const { GROUP_JOIN, CRASH } = this.consumer.events
    this.consumer.on(GROUP_JOIN, ({ payload }) => {
      this.assigned = new Set(payload.memberAssignment[topic] || [])
    })
    this.consumer.on(CRASH, ({ payload }) => {
      this.error = payload.error
    })
  }

  async start() {
    await this.consumer.connect()
    await this.consumer.subscribe({ topics: [this.topic], fromBeginning: true })
    await this.consumer.run({
      eachMessage: async ({ partition, message, heartbeat }) => {
        // Past the gate's limit the member holds this record until the script lets it go
        // on (or it is leaving), so that joins and leaves land while records are left.
        // heartbeat() throws when the group rebalances: kafkajs then commits what was
        // processed, rejoins, and hands this record out again.
        while (this.seen.size >= this.gate.limit && !this.leaving) {
          await heartbeat()
          await sleep(20)
        }
        const key = `${partition}:${message.offset}`
        const i = message.value.toString().slice(1)
        expect(message.key.toString() === `k${i}`, `key of ${key}: ${message.key}`)
        expect(message.headers.index.toString() === i, `header index of ${key}`)
        expect(message.headers.source.toString() === 'kafkajs', `header source of ${key}`)
        if (!this.seen.has(key)) this.seen.set(key, [])
        this.seen.get(key).push(this.name)
        this.count += 1
        this.partitions.add(partition)
      },
    })
  }
}

async function main() {
  const [bootstrap, topic, group] = process.argv.slice(2)
  const RECORDS = Number(process.argv[5])
  expect(RECORDS > 0 && RECORDS % BATCH === 0, `RECORDS: ${process.argv[5]}`)
  const kafka = new Kafka({
    clientId: 'eventflow-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    retry: { retries: 5 },
  })

  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: PARTITIONS }],
    waitForLeaders: true,
  })
  expect(created === true, `createTopics: ${created}`)
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  const partitions = metadata.topics[0].partitions
  expect(partitions.length === PARTITIONS, `partitions: ${JSON.stringify(partitions)}`)
  expect(partitions.every(p => p.leader === 0), `leaders: ${JSON.stringify(partitions)}`)
  say({ step: 'created', topic })

  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const next = new Map()
  for (let from = 0; from < RECORDS; from += BATCH) {
    const messages = []
    for (let i = from; i < from + BATCH; i++) {
      messages.push({
        key: `k${i}`,
        value: `v${i}`,
        headers: { index: String(i), source: 'kafkajs' },
      })
    }
    const acks = await producer.send({ topic, acks: -1, messages })
    for (const ack of acks) {
      expect(ack.errorCode === 0, `produce: ${JSON.stringify(ack)}`)
      // Each batch of a partition starts where the last one ended.
      const base = Number(ack.baseOffset)
      expect(base === (next.get(ack.partition) || 0), `base offset: ${JSON.stringify(ack)}`)
      next.set(ack.partition, base)
    }
    const ends = await admin.fetchTopicOffsets(topic)
    for (const { partition, high } of ends) next.set(partition, Number(high))
  }
  await producer.disconnect()
  const produced = [...next.values()].reduce((a, b) => a + b, 0)
  expect(produced === RECORDS, `end offsets add up to ${produced}`)
  say({ step: 'produced', records: RECORDS, partitions: next.size })

  const seen = new Map()
  const gate = { limit: RECORDS / 4 }
  const a = new Member(kafka, 'member-a', topic, group, seen, gate)
  await a.start()
  await waitUntil('A has a quarter', () => seen.size >= RECORDS / 4, [a])
  const b = new Member(kafka, 'member-b', topic, group, seen, gate)
  await b.start()
  await waitUntil(
    'both members hold partitions',
    () =>
      a.assigned.size > 0 &&
      b.assigned.size > 0 &&
      new Set([...a.assigned, ...b.assigned]).size === PARTITIONS &&
      [...a.assigned].every(p => !b.assigned.has(p)),
    [a, b]
  )
  const described = (await admin.describeGroups([group])).groups[0]
  expect(described.state === 'Stable', `state: ${JSON.stringify(described)}`)
  expect(described.protocolType === 'consumer', `protocol type: ${described.protocolType}`)
  expect(described.members.length === 2, `members: ${JSON.stringify(described.members)}`)
  say({
    step: 'both-active',
    protocol: described.protocol,
    a: [...a.assigned].sort(),
    b: [...b.assigned].sort(),
  })
  await stdinLines.next()

  gate.limit = (3 * RECORDS) / 4
  await waitUntil('three quarters', () => seen.size >= gate.limit, [a, b])
  const heldByA = [...a.assigned]
  b.partitions.clear()
  a.leaving = true
  await a.consumer.disconnect()
  expect(!a.error, `A closed cleanly: ${a.error}`)
  gate.limit = RECORDS
  await waitUntil('B holds every partition', () => b.assigned.size === PARTITIONS, [b])
  await waitUntil('B has everything', () => seen.size >= RECORDS, [b])
  // kafkajs commits at the end of each batch; disconnect() lets the batch finish first.
  await b.consumer.disconnect()
  expect(!b.error, `B closed cleanly: ${b.error}`)
  const committed = async () => {
    const [t] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
    return new Map(t.partitions.map(p => [p.partition, Number(p.offset)]))
  }
  const ends = new Map(
    (await admin.fetchTopicOffsets(topic)).map(p => [p.partition, Number(p.high)])
  )
  const sameAsEnds = offsets =>
    [...ends].every(([p, high]) => offsets.get(p) === high) && offsets.size === ends.size

  const twice = [...seen].filter(([, members]) => members.length > 1)
  expect(twice.length === 0, `records delivered twice: ${JSON.stringify(twice.slice(0, 10))}`)
  expect(seen.size === RECORDS, `${seen.size} distinct records of ${RECORDS}`)
  expect(a.count > 0 && b.count > 0, `both consumed: a=${a.count} b=${b.count}`)
  const takenOver = heldByA.filter(p => b.partitions.has(p))
  say({ step: 'consumed', a: a.count, b: b.count, taken_over: takenOver })

  const { groups } = await admin.listGroups()
  expect(
    groups.some(g => g.groupId === group && g.protocolType === 'consumer'),
    `${group} listed: ${JSON.stringify(groups)}`
  )
  const empty = (await admin.describeGroups([group])).groups[0]
  expect(empty.state === 'Empty', `state: ${JSON.stringify(empty)}`)
  expect(empty.members.length === 0, `members: ${JSON.stringify(empty.members)}`)
  say({ step: 'described', state: empty.state })

  const offsets = await committed()
  expect(sameAsEnds(offsets), `committed ${[...offsets]} == end offsets ${[...ends]}`)
  say({ step: 'offsets', committed: Object.fromEntries(offsets) })

  // The admin client moves an idle group's offsets by joining it with a consumer that seeks
  // and commits: to the earliest offset it commits -2, which the broker stores as sent (a
  // negative offset reads as nothing committed), then to an explicit one.
  await admin.resetOffsets({ groupId: group, topic, earliest: true })
  const reset = await committed()
  expect(
    reset.size === PARTITIONS && [...reset.values()].every(o => o === -2),
    `after resetOffsets: ${[...reset]}`
  )
  await admin.setOffsets({ groupId: group, topic, partitions: [{ partition: 1, offset: '5' }] })
  const set = await committed()
  expect(set.get(1) === 5 && set.get(0) === -2, `after setOffsets: ${[...set]}`)
  say({ step: 'reset', committed: Object.fromEntries(set) })

  const [deleted] = await admin.deleteGroups([group])
  expect(deleted.groupId === group && deleted.errorCode === 0, `deleteGroups: ${JSON.stringify(deleted)}`)
  const [after] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
  expect(
    after.partitions.every(p => p.offset === '-1'),
    `offsets after delete: ${JSON.stringify(after)}`
  )
  await admin.deleteTopics({ topics: [topic] })
  const listed = await admin.listTopics()
  expect(!listed.includes(topic), `${topic} still listed: ${listed}`)
  await admin.disconnect()
  say({ step: 'deleted' })
}

main()
  .then(() => process.exit(0))
  .catch(e => {
    process.stderr.write(`${e.stack || e}\n`)
    process.exit(1)
  })
