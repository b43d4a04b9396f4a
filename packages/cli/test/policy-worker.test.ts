/**
 * `beetle policy-updates` against hostile policy update messages (real broker, real management API): the
 * worker must not send its credentials to a host a message names, nor change queues it does not manage.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createRequire } from 'node:module';
import type * as Amqp from 'amqplib';
import { encodeMessage } from '@beetle/core/kit';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanup, lines, management, run, servers, serviceFlags, tempFile, uid } from './helpers.js';

const requireFromBroker = createRequire(new URL('../../broker-amqp/package.json', import.meta.url));
const amqp = requireFromBroker('amqplib') as typeof Amqp;

const server = servers[0]!;
const created = { queues: [] as string[], exchanges: [] as string[], policies: [] as string[] };
afterAll(async () => {
  await cleanup(created);
});

/** An HTTP server on the management port ("1" + port) of a made-up broker `127.0.0.1:<port>`. */
async function fakeManagementApi(): Promise<{
  broker: string;
  requests: IncomingMessage[];
  close(): Promise<void>;
}> {
  const requests: IncomingMessage[] = [];
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 5000 + Math.floor(Math.random() * 1500);
    const http: Server = createServer((request, response) => {
      requests.push(request);
      response.writeHead(404).end();
    });
    const listening = await new Promise<boolean>((resolve) => {
      http.once('error', () => resolve(false));
      http.listen(Number(`1${port}`), '127.0.0.1', () => resolve(true));
    });
    if (listening) {
      return {
        broker: `127.0.0.1:${port}`,
        requests,
        close: () => new Promise((resolve) => http.close(() => resolve())),
      };
    }
  }
  throw new Error('no free port for the fake management API');
}

type Binding = [source: string, key: string];

async function bindingsOf(queue: string): Promise<Binding[]> {
  const response = await management(server, 'GET', `/api/queues/%2F/${queue}/bindings`);
  const list = (await response.json()) as { source: string; routing_key: string }[];
  return list.map((b): Binding => [b.source, b.routing_key]).sort();
}

describe('policy-updates refuses what a message must not decide', () => {
  it('no credentials to unconfigured hosts, no changes to unmanaged queues or foreign dead letter queues', async () => {
    const id = uid();
    const allowed = `cli-pw-allowed-${id}`;
    const bare = `cli-pw-bare-${id}`;
    const victim = `cli-pw-victim-${id}`;
    const policyExchange = `cli-pw-policies-${id}`;
    const policyQueue = `cli-pw-updates-${id}`;
    created.queues.push(allowed, bare, victim, policyQueue);
    created.exchanges.push(allowed, bare, victim, policyExchange);
    created.policies.push(
      ...[allowed, bare, victim].flatMap((q) => [`${q}_policy`, `${q}_dead_letter_policy`]),
    );
    const topology = tempFile('topology.yml', `queues:\n  ${allowed}:\n    lazy: true\n  ${bare}: {}\n`);
    const fake = await fakeManagementApi();

    const update = (over: Record<string, unknown>): Record<string, unknown> => ({
      queue_name: allowed,
      bindings: [{ exchange: allowed, key: allowed }],
      dead_letter_queue_name: `${allowed}_dead_letter`,
      message_ttl: 1000,
      dead_lettering: false,
      lazy: true,
      server,
      ...over,
    });
    const messages = [
      // 1. Another host: the worker would send it its user and password.
      update({ server: fake.broker }),
      // 2. A queue the worker does not manage, "unbound" from everything but a made-up exchange.
      update({
        queue_name: victim,
        dead_letter_queue_name: `${victim}_dead_letter`,
        bindings: [{ exchange: 'x', key: 'y' }],
      }),
      // 3. A managed queue whose "dead letter queue" is someone else's queue.
      update({ dead_letter_queue_name: victim }),
      // 4. A managed queue with an empty binding list: Ruby removes nothing then (an empty list is not present).
      update({ queue_name: bare, dead_letter_queue_name: `${bare}_dead_letter`, bindings: [], lazy: false }),
      // 5. A valid update.
      update({}),
    ];
    const conn = await amqp.connect(`amqp://guest:guest@${server}`);
    try {
      const ch = await conn.createConfirmChannel();
      await ch.assertExchange(policyExchange, 'topic', { durable: true });
      await ch.assertQueue(policyQueue, { durable: true });
      await ch.bindQueue(policyQueue, policyExchange, 'beetle.policy.update');
      for (const name of [allowed, bare, victim]) {
        await ch.assertExchange(name, 'topic', { durable: true });
        await ch.assertQueue(name, { durable: true });
        await ch.bindQueue(name, name, name);
        await ch.bindQueue(name, name, 'extra');
      }
      for (const payload of messages) {
        const { body, properties } = encodeMessage(JSON.stringify(payload));
        ch.publish(policyExchange, 'beetle.policy.update', body, properties);
      }
      await ch.waitForConfirms();
    } finally {
      await conn.close();
    }

    const worker = await run([
      'policy-updates',
      '--count',
      String(messages.length),
      '--topology',
      topology,
      '--json',
      ...serviceFlags(10),
      '--set',
      `beetle_policy_exchange_name=${policyExchange}`,
      '--set',
      `beetle_policy_updates_queue_name=${policyQueue}`,
    ]);
    await fake.close();
    expect(worker.code).toBe(0);
    const results = lines(worker.stdout).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(results.map((r) => [r['ok'], r['reason'] ?? null])).toEqual([
      [false, 'policy-refused'],
      [false, 'policy-refused'],
      [false, 'policy-refused'],
      [true, null],
      [true, null],
    ]);
    const refusals = lines(worker.stderr).filter((line) =>
      line.startsWith('beetle: refused policy update message'),
    );
    expect(refusals.map((line) => /\((\w+)\); dropped/.exec(line)?.[1])).toEqual([
      'server',
      'queue_name',
      'dead_letter_queue_name',
    ]);

    // 1. Nothing reached the other host.
    expect(fake.requests.map((r) => `${r.method} ${r.url} ${r.headers.authorization ?? ''}`)).toEqual([]);
    // 2. The unmanaged queue keeps its bindings and has no policy.
    expect(await bindingsOf(victim)).toEqual(
      [
        ['', victim],
        [victim, 'extra'],
        [victim, victim],
      ].sort(),
    );
    for (const name of [victim, `${victim}_dead_letter`]) {
      expect((await management(server, 'GET', `/api/policies/%2F/${name}_policy`)).status).toBe(404);
    }
    // 4. An empty binding list removed nothing.
    expect(await bindingsOf(bare)).toEqual(
      [
        ['', bare],
        [bare, 'extra'],
        [bare, bare],
      ].sort(),
    );
    // 5. The valid update was applied: policy installed, the obsolete binding removed.
    const policy = await management(server, 'GET', `/api/policies/%2F/${allowed}_policy`);
    expect(policy.status).toBe(200);
    expect(((await policy.json()) as { definition: unknown }).definition).toEqual({ 'queue-mode': 'lazy' });
    expect(await bindingsOf(allowed)).toEqual(
      [
        ['', allowed],
        [allowed, allowed],
      ].sort(),
    );
    // Everything was acknowledged (refused messages are dropped, not requeued).
    const check = await amqp.connect(`amqp://guest:guest@${server}`);
    try {
      expect((await (await check.createChannel()).checkQueue(policyQueue)).messageCount).toBe(0);
    } finally {
      await check.close();
    }
  });

  it('warns that it refuses everything without --topology or policy_updates_allowed_queues', async () => {
    const id = uid();
    const policyQueue = `cli-pw-updates-${id}`;
    const policyExchange = `cli-pw-policies-${id}`;
    created.queues.push(policyQueue);
    created.exchanges.push(policyExchange);
    const controller = new AbortController();
    const worker = run(
      [
        'policy-updates',
        ...serviceFlags(10),
        '--set',
        `beetle_policy_exchange_name=${policyExchange}`,
        '--set',
        `beetle_policy_updates_queue_name=${policyQueue}`,
      ],
      {
        signal: controller.signal,
        onStderr: (text) => text.includes('applying policy updates') && controller.abort(),
      },
    );
    const result = await worker;
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('no queue is allowed, every policy update will be refused');
  });
});
