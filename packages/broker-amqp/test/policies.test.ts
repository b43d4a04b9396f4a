import { createServer } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import amqp from 'amqplib';
import { PolicyRefusedError, PolicyRequestError, silentLogger, Topology } from '@beetle/core';
import { Memo } from '@beetle/core/kit';
import {
  BrokerConnection,
  brokerOptions,
  checkPolicyUpdate,
  PolicyClient,
  policyUpdateAllowance,
  policyDefinition,
  policyUpdatePayload,
  setupQueue,
} from '@beetle/broker-amqp';
import { cleanup, config, management, queueExists, raw, servers, uid } from './helpers.js';

const server = servers[0]!;
const opened: BrokerConnection[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
});

const policyOf = async (
  queue: string,
): Promise<{ status: number; body: Record<string, unknown> | undefined }> => {
  const response = await management(
    server,
    'GET',
    `/api/policies/%2F/${encodeURIComponent(`${queue}_policy`)}`,
  );
  return {
    status: response.status,
    body: response.status === 200 ? ((await response.json()) as Record<string, unknown>) : undefined,
  };
};

describe('policy definitions and payloads', () => {
  it('builds Ruby definitions', () => {
    expect(policyDefinition({ lazy: true, deadLettering: true, routingKey: 'q_dead_letter' })).toEqual({
      'dead-letter-routing-key': 'q_dead_letter',
      'dead-letter-exchange': '',
      'queue-mode': 'lazy',
    });
    expect(policyDefinition({ lazy: false, deadLettering: true, routingKey: 'q', messageTtl: 1000 })).toEqual(
      {
        'dead-letter-routing-key': 'q',
        'dead-letter-exchange': '',
        'message-ttl': 1000,
      },
    );
  });

  it('builds the §3.6 payload with keys in Ruby order', () => {
    const topology = new Topology().registerQueue('orders');
    const payload = policyUpdatePayload(
      'rabbit1:5672',
      topology.queue('orders'),
      topology.bindings('orders'),
    );
    expect(JSON.stringify(payload)).toBe(
      '{"queue_name":"orders","bindings":[{"exchange":"orders","key":"orders"}],"dead_letter_queue_name":"orders_dead_letter","message_ttl":1000,"dead_lettering":false,"lazy":false,"server":"rabbit1:5672"}',
    );
  });
});

describe('checking policy update messages (what a worker accepts)', () => {
  const cfg = config({
    servers: ['rabbit1:5672'],
    additionalSubscriptionServers: ['rabbit2:5672'],
    policyUpdatesAllowedQueues: 'billing, orders.*',
  });
  const topology = new Topology(cfg).registerQueue('audit');
  const allowance = policyUpdateAllowance(cfg, topology);
  const valid = {
    queue_name: 'audit',
    bindings: [{ exchange: 'audit', key: 'audit' }],
    dead_letter_queue_name: 'audit_dead_letter',
    message_ttl: 1000,
    dead_lettering: true,
    lazy: false,
    server: 'rabbit2:5672',
  };
  const refusal = (payload: unknown): string | undefined => {
    try {
      checkPolicyUpdate(cfg, allowance, payload);
      return undefined;
    } catch (error) {
      expect(error).toBeInstanceOf(PolicyRefusedError);
      expect((error as PolicyRefusedError).reason).toBe('policy-refused');
      return (error as PolicyRefusedError).field;
    }
  };

  it('accepts configured servers and the queues of the topology and of policy_updates_allowed_queues', () => {
    expect(checkPolicyUpdate(cfg, allowance, valid)).toEqual(valid);
    for (const queue of ['billing', 'orders.eu', 'orders.']) {
      expect(refusal({ ...valid, queue_name: queue, dead_letter_queue_name: `${queue}_dead_letter` })).toBe(
        undefined,
      );
    }
    expect(allowance.description).toBe(
      'the 1 queues of the topology and policy_updates_allowed_queues (billing, orders.*)',
    );
    expect(policyUpdateAllowance(config({ policyUpdatesAllowedQueues: '*' })).allows('anything')).toBe(true);
    expect(policyUpdateAllowance(config()).empty).toBe(true);
  });

  it('refuses other servers, other queues, the policy queue, foreign dead letter queues and malformed fields', () => {
    expect(refusal({ ...valid, server: 'evil.example:5672' })).toBe('server');
    expect(refusal({ ...valid, server: undefined })).toBe('server');
    expect(refusal({ ...valid, queue_name: 'orders' })).toBe('queue_name');
    expect(refusal({ ...valid, queue_name: 'billing-x' })).toBe('queue_name');
    expect(refusal({ ...valid, queue_name: 'beetle-policy-updates' })).toBe('queue_name');
    expect(refusal({ ...valid, dead_letter_queue_name: 'billing' })).toBe('dead_letter_queue_name');
    expect(refusal({ ...valid, bindings: 'all' })).toBe('bindings');
    expect(refusal({ ...valid, bindings: [{ key: 'k' }] })).toBe('bindings[0].exchange');
    expect(refusal({ ...valid, message_ttl: -1 })).toBe('message_ttl');
    expect(refusal({ ...valid, lazy: 'yes' })).toBe('lazy');
    expect(refusal([valid])).toBe('payload');
  });
});

describe('policies via the management API', () => {
  it('synchronous mode installs the policies Ruby would install, declares the DLQ, and is idempotent', async () => {
    const name = `bt.pol-${uid()}`;
    const dlq = `${name}_dead_letter`;
    const topology = new Topology().registerQueue(name, { deadLettering: true, lazy: true });
    const cfg = config({ updateQueuePropertiesSynchronously: true, servers: [server] });
    const c = new BrokerConnection(brokerOptions(cfg, server, silentLogger));
    opened.push(c);
    try {
      const result = await setupQueue(await c.declarer(), topology, name, { server, config: cfg });
      expect(result).toEqual({ queue: name, server, policy: 'applied' });
      const queuePolicy = await policyOf(name);
      expect(queuePolicy.body).toMatchObject({
        name: `${name}_policy`,
        vhost: '/',
        // Unlike Ruby the queue name is escaped in the pattern.
        pattern: `^bt\\.pol-${name.slice(7)}$`,
        'apply-to': 'queues',
        priority: 1,
        definition: { 'dead-letter-routing-key': dlq, 'dead-letter-exchange': '', 'queue-mode': 'lazy' },
      });
      const dlqPolicy = await policyOf(dlq);
      expect(dlqPolicy.body).toMatchObject({
        definition: {
          'dead-letter-routing-key': name,
          'dead-letter-exchange': '',
          'message-ttl': 1000,
          'queue-mode': 'lazy',
        },
      });
      expect(await queueExists(server, dlq)).toBe(true);
      expect(await queueExists(server, name)).toBe(true);

      const client = new PolicyClient(cfg);
      expect(
        await client.setQueuePolicy(server, name, { lazy: true, deadLettering: true, routingKey: dlq }),
      ).toBe('unchanged');
      // Unlike Ruby a stale policy is removed when neither option is wanted any more.
      expect(await client.setQueuePolicy(server, name, { lazy: false, deadLettering: false })).toBe(
        'deleted',
      );
      expect((await policyOf(name)).status).toBe(404);
    } finally {
      await cleanup({
        queues: [name, dlq],
        exchanges: [name],
        policies: [`${name}_policy`, `${dlq}_policy`],
      });
    }
  });

  it("a quorum queue gets delivery-limit 2147483647 (no limit but Beetle's attempts), its DLQ too", async () => {
    const name = `bt.qq-${uid()}`;
    const dlq = `${name}_dead_letter`;
    const topology = new Topology().registerQueue(name, {
      deadLettering: true,
      arguments: { 'x-queue-type': 'quorum' },
    });
    const plain = `bt.cq-${uid()}`;
    topology.registerQueue(plain);
    const cfg = config({ updateQueuePropertiesSynchronously: true, servers: [server] });
    const c = new BrokerConnection(brokerOptions(cfg, server, silentLogger));
    opened.push(c);
    try {
      expect(policyUpdatePayload(server, topology.queue(name), []).queue_type).toBe('quorum');
      expect(policyUpdatePayload(server, topology.queue(plain), [])).not.toHaveProperty('queue_type');
      await setupQueue(await c.declarer(), topology, name, { server, config: cfg });
      await setupQueue(await c.declarer(), topology, plain, { server, config: cfg });
      expect((await policyOf(name)).body?.definition).toEqual({
        'dead-letter-routing-key': dlq,
        'dead-letter-exchange': '',
        'delivery-limit': 2_147_483_647,
      });
      expect((await policyOf(dlq)).body?.definition).toMatchObject({ 'delivery-limit': 2_147_483_647 });
      // A classic queue without lazy mode or dead lettering gets no policy, as in Ruby.
      expect((await policyOf(plain)).status).toBe(404);
      // The broker applies it (the management API shows it with the queue's next stats, about every 5 s).
      for (let i = 0; i < 150; i++) {
        const response = await management(server, 'GET', `/api/queues/%2F/${encodeURIComponent(name)}`);
        const body = (await response.json()) as Record<string, unknown>;
        const effective = body['effective_policy_definition'] as Record<string, unknown> | undefined;
        if (effective?.['delivery-limit'] === 2_147_483_647) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error('the queue never showed delivery-limit 2147483647 as its effective policy');
    } finally {
      await cleanup({
        queues: [name, dlq, plain],
        exchanges: [name, plain],
        policies: [`${name}_policy`, `${dlq}_policy`],
      });
    }
  });

  it('deletes a per-queue policy equal to the broker default policy', async () => {
    const name = `bt-def-${uid()}`;
    const cfg = config({ servers: [server], brokerDefaultPolicy: { 'queue-mode': 'lazy' } });
    const client = new PolicyClient(cfg);
    try {
      await management(server, 'PUT', `/api/policies/%2F/${name}_policy`, {
        pattern: `^${name}$`,
        'apply-to': 'queues',
        priority: 1,
        definition: { 'queue-mode': 'lazy' },
      });
      expect(await client.setQueuePolicy(server, name, { lazy: true, deadLettering: false })).toBe('deleted');
      expect(await client.setQueuePolicy(server, name, { lazy: true, deadLettering: false })).toBe('none');
    } finally {
      await cleanup({ policies: [`${name}_policy`] });
    }
  });

  it('removes obsolete bindings comparing string keys (parsed policy message JSON)', async () => {
    const name = `bt-bind-${uid()}`;
    const other = `${name}-other`;
    const cfg = config({ servers: [server] });
    const conn = await amqp.connect(`amqp://guest:guest@${server}`);
    try {
      const ch = await conn.createChannel();
      await ch.assertQueue(name, { durable: true });
      await ch.assertExchange(name, 'topic', { durable: true });
      await ch.assertExchange(other, 'topic', { durable: true });
      await ch.bindQueue(name, name, name);
      await ch.bindQueue(name, other, 'old.key');
      await ch.bindQueue(name, name, 'another');
      const parsed = JSON.parse(
        JSON.stringify({
          queue_name: name,
          bindings: [{ exchange: name, key: name }],
          dead_letter_queue_name: `${name}_dead_letter`,
          message_ttl: 1000,
          dead_lettering: false,
          lazy: false,
          server,
        }),
      ) as Record<string, unknown>;
      await new PolicyClient(cfg).updateQueueProperties(parsed);
      const bindings = (await (
        await management(server, 'GET', `/api/queues/%2F/${name}/bindings`)
      ).json()) as {
        source: string;
        routing_key: string;
      }[];
      expect(bindings.map((b) => [b.source, b.routing_key]).sort()).toEqual([
        ['', name],
        [name, name],
      ]);
    } finally {
      await conn.close();
      await cleanup({ queues: [name], exchanges: [name, other] });
    }
  });

  it('refuses the queue names "." and ".." (the URL would resolve to another endpoint) before any request', async () => {
    const cfg = config({ servers: [server] });
    const requests: string[] = [];
    const recording: typeof fetch = (input, init) => {
      requests.push(input instanceof Request ? input.url : input.toString());
      return fetch(input, init);
    };
    const client = new PolicyClient(cfg, silentLogger, recording);
    await raw(server, (ch) => ch.assertQueue('..', { durable: false, autoDelete: false }));
    try {
      // Both fetch and RabbitMQ resolve dot segments, also percent-encoded: GET /api/queues/%2F/.. and
      // /api/queues/%2F/%2E%2E are the list of every queue, not the queue "..".
      expect(await (await management(server, 'GET', '/api/queues/%2F/%2E%2E')).json()).toBeInstanceOf(Array);
      const refused = (field: string) => (e: unknown) => e instanceof PolicyRefusedError && e.field === field;
      await expect(client.queueProperties(server, '..')).rejects.toSatisfy(refused('queue'));
      await expect(client.queueProperties(server, '.')).rejects.toSatisfy(refused('queue'));
      await expect(client.removeObsoleteBindings(server, '..', [])).rejects.toSatisfy(refused('queue'));
      const vhostDots = new PolicyClient(config({ servers: [server], vhost: '..' }), silentLogger, recording);
      await expect(
        vhostDots.setQueuePolicy(server, 'q', { lazy: true, deadLettering: false }),
      ).rejects.toSatisfy(refused('vhost'));
      expect(requests).toEqual([]);
      // An ordinary name with dots inside is addressed as usual.
      expect(await client.queueProperties(server, `bt.none.${uid()}`)).toBeUndefined();
    } finally {
      await raw(server, (ch) => ch.deleteQueue('..'));
    }
  });

  it('removes obsolete bindings whose routing key is "." or ".." (properties key quoted as %2E)', async () => {
    const name = `bt-dots-${uid()}`;
    await raw(server, async (ch) => {
      await ch.assertQueue(name, { durable: false });
      await ch.assertExchange(name, 'topic', { durable: false });
      await ch.bindQueue(name, name, name);
      for (const key of ['.', '..', 'a.b', 'a/b~%']) await ch.bindQueue(name, name, key);
    });
    try {
      const removed = await new PolicyClient(config({ servers: [server] })).removeObsoleteBindings(
        server,
        name,
        [{ exchange: name, key: name }],
      );
      expect(removed).toBe(4);
      const bindings = (await (
        await management(server, 'GET', `/api/queues/%2F/${name}/bindings`)
      ).json()) as { source: string; routing_key: string }[];
      expect(bindings.map((b) => [b.source, b.routing_key]).sort()).toEqual([
        ['', name],
        [name, name],
      ]);
    } finally {
      await cleanup({ queues: [name], exchanges: [name] });
    }
  });

  it('sends its credentials only to configured brokers: other servers are refused before any request', async () => {
    const requests: string[] = [];
    const http = createServer((request, response) => {
      requests.push(`${request.method} ${request.url} ${request.headers.authorization ?? ''}`);
      response.writeHead(404).end();
    });
    // A listener on the management port ("1" + AMQP port) of the made-up broker 127.0.0.1:<amqp port>.
    let amqpPort = 0;
    for (let attempt = 0; attempt < 50 && amqpPort === 0; attempt++) {
      const candidate = 5000 + Math.floor(Math.random() * 1500);
      const listening = await new Promise<boolean>((resolve) => {
        http.once('error', () => resolve(false));
        http.listen(Number(`1${candidate}`), '127.0.0.1', () => resolve(true));
      });
      if (listening) amqpPort = candidate;
    }
    expect(amqpPort).not.toBe(0);
    const other = `127.0.0.1:${amqpPort}`;
    try {
      const client = new PolicyClient(config({ servers: [server] }));
      const refused = (e: unknown) => e instanceof PolicyRefusedError && e.field === 'server';
      await expect(client.setQueuePolicy(other, 'q', { lazy: true, deadLettering: false })).rejects.toSatisfy(
        refused,
      );
      await expect(client.queueProperties(other, 'q')).rejects.toSatisfy(refused);
      await expect(client.removeObsoleteBindings(other, 'q', [])).rejects.toSatisfy(refused);
      expect(requests).toEqual([]);
      // The same client reaches the listener once the server is configured (so the check above can fail).
      await expect(
        new PolicyClient(config({ servers: [server, other] })).queueProperties(other, 'q'),
      ).resolves.toBeUndefined();
      expect(requests).toEqual([
        `GET /api/queues/%2F/q Basic ${Buffer.from('guest:guest').toString('base64')}`,
      ]);
    } finally {
      await new Promise((resolve) => http.close(resolve));
    }
  });

  it('non-2xx answers reject with PolicyRequestError', async () => {
    const cfg = config({ servers: [server], password: 'wrong' });
    await expect(
      new PolicyClient(cfg).setQueuePolicy(server, 'q', { lazy: true, deadLettering: false }),
    ).rejects.toSatisfy((e: unknown) => e instanceof PolicyRequestError && e.status === 401);
  });

  it('asynchronous mode publishes the policy message with the exact schema to beetle-policy-updates', async () => {
    const name = `bt-async-${uid()}`;
    const topology = new Topology().registerQueue(name, { deadLettering: true });
    const cfg = config({ servers: [server] });
    const c = new BrokerConnection(brokerOptions(cfg, server, silentLogger));
    opened.push(c);
    const declared = new Memo();
    try {
      const publisher = await c.publishChannel();
      const result = await setupQueue(await c.declarer(), topology, name, {
        server,
        config: cfg,
        policyPublisher: publisher,
        once: (key, fn) => declared.run(key, fn),
      });
      expect(result.policy).toBe('published');
      expect(await queueExists(server, `${name}_dead_letter`)).toBe(true);
      // Find our message among whatever else is in the shared policy queue; leave the others there.
      const conn = await amqp.connect(`amqp://guest:guest@${server}`);
      try {
        const ch = await conn.createChannel();
        let found: amqp.GetMessage | undefined;
        for (let i = 0; i < 10_000 && !found; i++) {
          const message = await ch.get('beetle-policy-updates', { noAck: false });
          if (message === false) break;
          if (message.content.toString().includes(`"queue_name":"${name}"`)) {
            found = message;
            ch.ack(message);
          }
        }
        expect(found).toBeDefined();
        expect(found!.content.toString()).toBe(
          JSON.stringify({
            queue_name: name,
            bindings: [{ exchange: name, key: name }],
            dead_letter_queue_name: `${name}_dead_letter`,
            message_ttl: 1000,
            dead_lettering: true,
            lazy: false,
            server,
          }),
        );
        expect(found!.fields).toMatchObject({
          exchange: 'beetle-policies',
          routingKey: 'beetle.policy.update',
        });
        expect(found!.properties).toMatchObject({
          contentType: 'application/octet-stream',
          deliveryMode: 2,
          priority: 0,
          headers: { format_version: '1', flags: '0' },
        });
        const headers = found!.properties.headers as Record<string, unknown>;
        expect(Number(headers.expires_at) - Number(found!.properties.timestamp)).toBe(86400);
      } finally {
        await conn.close();
      }
    } finally {
      await cleanup({ queues: [name, `${name}_dead_letter`], exchanges: [name] });
    }
  });
});
