#!/usr/bin/env node
// Read imagegen's job events with kafkajs, drop duplicates by event id, print JSON lines.
//
//   npm ci --prefix examples/node-consumer
//   node examples/node-consumer/consumer.js --bootstrap 127.0.0.1:29092 \
//       --topics 'imagegen.jobs.*' --max-events 10 --timeout 60
//
// imagegen's producers compress with LZ4 (compression.type=lz4). kafkajs ships only gzip: without
// a registered LZ4 codec it fails on every batch ("LZ4 compression not implemented"), so this
// example registers kafkajs-lz4 first. Topics come from the AsyncAPI document (docs/asyncapi.json):
// --topics takes globs over its channel addresses. Reads from the beginning in its own group,
// skips a record whose event id (envelope event_id = header ce_id) it already printed (delivery
// is at least once), prints one JSON object per event on stdout and a summary on stderr.
// Exit status: 0 when --max-events were printed (or, without it, when --timeout ran out), 3 when
// the timeout ran out first, 4 when the consumer crashed for good (e.g. an LZ4 batch and no
// codec: --without-lz4-codec), 2 on bad arguments. See docs/consumers.md.
'use strict';

const fs = require('fs');
const path = require('path');
const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
const LZ4Codec = require('kafkajs-lz4');

// --without-lz4-codec shows what a client without the plugin gets (the test suite checks it).
if (!process.argv.includes('--without-lz4-codec')) {
  CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec;
}

function usage(message) {
  process.stderr.write(`consumer.js: ${message}\n`);
  process.stderr.write(
    'usage: consumer.js [--bootstrap HOST:PORT] [--topics GLOB...] [--topic-prefix P] ' +
      '[--group G] [--max-events N] [--timeout SECONDS] [--asyncapi FILE] [--without-lz4-codec]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = {
    bootstrap: '127.0.0.1:29092',
    topics: ['imagegen.jobs.*'],
    topicPrefix: '',
    group: `example-node-${Math.random().toString(16).slice(2, 10)}`,
    maxEvents: null,
    timeout: 30,
    asyncapi: path.join(__dirname, '..', '..', 'docs', 'asyncapi.json'),
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) usage(`${flag} needs a value`);
      return argv[++i];
    };
    if (flag === '--bootstrap') args.bootstrap = value();
    else if (flag === '--topics') {
      args.topics = [value()];
      while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) args.topics.push(argv[++i]);
    } else if (flag === '--topic-prefix') args.topicPrefix = value();
    else if (flag === '--group') args.group = value();
    else if (flag === '--max-events') {
      args.maxEvents = Number(value());
      if (!Number.isInteger(args.maxEvents) || args.maxEvents < 1) usage('--max-events must be an integer >= 1');
    } else if (flag === '--timeout') {
      args.timeout = Number(value());
      if (!(args.timeout > 0)) usage('--timeout must be > 0');
    } else if (flag === '--asyncapi') args.asyncapi = value();
    else if (flag === '--without-lz4-codec') args.withoutLz4 = true;
    else usage(`unknown argument ${flag}`);
  }
  return args;
}

function globToRegExp(glob) {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`);
}

function selectTopics(args, doc) {
  const addresses = Object.values(doc.channels).map((c) => c.address);
  const patterns = args.topics.map(globToRegExp);
  const names = addresses.filter((a) => patterns.some((p) => p.test(a)));
  if (names.length === 0) usage(`--topics ${args.topics.join(' ')} matches no channel of ${args.asyncapi}`);
  return names.map((n) => args.topicPrefix + n);
}

// The newest schema_version of each event type this consumer was written against, from the
// channels' x-event-types ("imagegen.image.delivered.v1").
function knownVersions(doc) {
  const known = new Map();
  for (const channel of Object.values(doc.channels)) {
    for (const typed of channel['x-event-types'] || []) {
      const at = typed.lastIndexOf('.v');
      const type = typed.slice(0, at);
      known.set(type, Math.max(known.get(type) || 0, Number(typed.slice(at + 2))));
    }
  }
  return known;
}

// kafkajs logs to stdout by default; the JSON lines own stdout, so its logs go to stderr.
const stderrLog = () => ({ namespace, level, log }) => {
  if (level <= logLevel.WARN) process.stderr.write(`kafkajs ${namespace}: ${log.message}\n`);
};

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const doc = JSON.parse(fs.readFileSync(args.asyncapi, 'utf8'));
  const topics = selectTopics(args, doc);
  const known = knownVersions(doc);
  const kafka = new Kafka({
    clientId: 'imagegen-node-consumer-example',
    brokers: args.bootstrap.split(','),
    logLevel: logLevel.WARN,
    logCreator: stderrLog,
  });
  const consumer = kafka.consumer({ groupId: args.group });
  const seen = new Set();
  let printed = 0;
  let duplicates = 0;
  let unparseable = 0;
  let finish;
  const done = new Promise((resolve) => {
    finish = resolve;
  });

  // A crash kafkajs will not retry (an undecodable batch, an LZ4 batch without the codec)
  // ends the run at once, with exit status 4.
  let crashed = null;
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    if (!payload.restart) {
      crashed = payload.error;
      finish(false);
    }
  });

  await consumer.connect();
  await consumer.subscribe({ topics, fromBeginning: true });
  await consumer.run({
    // Offsets are committed after eachMessage returns: at-least-once.
    eachMessage: async ({ topic, partition, message }) => {
      let envelope;
      try {
        envelope = JSON.parse(message.value ? message.value.toString('utf8') : '');
        if (typeof envelope.event_id !== 'string' || typeof envelope.type !== 'string') {
          throw new Error('no event_id or type');
        }
      } catch (err) {
        // Not an imagegen envelope: say where, go on.
        unparseable += 1;
        process.stderr.write(`skipped an unparseable record at ${topic}/${partition}/${message.offset}: ${err.message}\n`);
        return;
      }
      if (seen.has(envelope.event_id)) {
        duplicates += 1;
        return;
      }
      seen.add(envelope.event_id);
      const headers = {};
      for (const [k, v] of Object.entries(message.headers || {})) headers[k] = v ? v.toString() : '';
      const line = {
        event_id: envelope.event_id,
        ce_id: headers.ce_id || null,
        type: envelope.type,
        ce_type: headers.ce_type || null,
        schema_version: envelope.schema_version,
        occurred_at: envelope.occurred_at,
        key: message.key ? message.key.toString() : null,
        correlation_id: envelope.correlation_id,
        causation_id: envelope.causation_id,
        topic,
        partition,
        offset: Number(message.offset),
      };
      // Versioning rules (docs/consumers.md): a type or version newer than this consumer's
      // document is reported, not guessed at; unknown fields in a known version are ignored.
      const newest = known.get(envelope.type);
      if (newest === undefined) line.unparsed = `unknown event type ${envelope.type}`;
      else if (envelope.schema_version > newest) {
        line.unparsed = `${envelope.type} v${envelope.schema_version} is newer than this consumer (v${newest})`;
      } else line.data = envelope.data;
      process.stdout.write(`${JSON.stringify(line)}\n`);
      printed += 1;
      if (args.maxEvents !== null && printed >= args.maxEvents) finish(true);
    },
  });

  const timer = setTimeout(() => finish(args.maxEvents === null), args.timeout * 1000);
  const reached = await done;
  clearTimeout(timer);
  await consumer.disconnect();
  const summary = { printed, duplicates_skipped: duplicates };
  if (unparseable) summary.unparseable_skipped = unparseable;
  process.stderr.write(`${JSON.stringify(summary)}\n`);
  if (crashed) {
    process.stderr.write(`consumer.js: consumer crashed: ${crashed.name}: ${crashed.message}\n`);
    return 4;
  }
  return reached ? 0 : 3;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`consumer.js: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
