import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cleanup,
  lines,
  management,
  redis,
  run,
  servers,
  serviceFlags,
  start,
  tempFile,
  uid,
} from './helpers.js';

/**
 * Messaging tests use db 10 for the dedup store (redundant messages touch it; they leave no keys), and apply
 * policies synchronously, so no policy messages pile up in the shared policy queue.
 */
const flags = [...serviceFlags(10), '--set', 'update_queue_properties_synchronously=true'];

const created = { queues: [] as string[], exchanges: [] as string[], policies: [] as string[] };
afterAll(async () => {
  await cleanup(created);
  // A redundant message whose second copy was not consumed before `listen --count` stopped keeps 5 keys
  // (until GC): db 10 is this file's own.
  const db = await redis(10);
  await db.call('FLUSHDB');
  db.close();
});

const uniqueQueue = (): string => {
  const name = `cli-test-${uid()}`;
  created.queues.push(name);
  created.exchanges.push(name);
  return name;
};

describe('publish and listen', () => {
  it('publishes a message and shows it with listen --json', async () => {
    const queue = uniqueQueue();
    const id = randomUUID();
    const published = await run([
      'publish',
      queue,
      'hello from the cli',
      '--queue',
      queue,
      '--message-id',
      id,
      '--header',
      'source=test',
      ...flags,
    ]);
    expect(published).toMatchObject({ code: 0, stdout: '1\n' });

    const listened = await run(['listen', queue, '--count', '1', '--json', ...flags]);
    expect(listened.code).toBe(0);
    const [line, ...rest] = lines(listened.stdout);
    expect(rest).toEqual([]);
    const message = JSON.parse(line!) as Record<string, unknown>;
    expect(message).toMatchObject({
      uuid: id,
      body: 'hello from the cli',
      bodyEncoding: 'utf8',
      queue,
      exchange: queue,
      routingKey: queue,
      redundant: false,
      headers: { source: 'test', format_version: '1', flags: '0' },
    });
    expect(servers).toContain(message['server']);
  });

  it('publishes redundantly to two brokers, reads the body from stdin and prints binary bodies as base64', async () => {
    const queue = uniqueQueue();
    const body = Buffer.from([0xff, 0x00, 0xfe, 0x41]);
    const published = await run(
      ['publish', queue, '-', '--queue', queue, '--redundant', '--json', ...flags],
      {
        stdin: body,
      },
    );
    expect(published.code).toBe(0);
    const { brokers, messageId } = JSON.parse(published.stdout) as { brokers: number; messageId: string };
    expect(brokers).toBe(2);

    // Both copies arrive; the second one is deduplicated through Redis, so one message is printed.
    const listened = await run(['listen', queue, '--count', '1', ...flags]);
    expect(listened.code).toBe(0);
    expect(listened.stdout).toContain(`uuid:        ${messageId}`);
    expect(listened.stdout).toContain(`body:        (base64) ${body.toString('base64')}`);
    expect(listened.stdout).toContain('redundant:   true');
  });

  it('stops listening gracefully when signalled', async () => {
    const queue = uniqueQueue();
    const controller = new AbortController();
    const listening = start(['listen', queue, ...flags], 'listening on', { signal: controller.signal });
    await listening.ready;
    controller.abort();
    const result = await listening.done;
    expect(result.code).toBe(0);
    expect(result.stderr).toContain(`listening on ${queue}`);
    expect(result.stdout).toBe('');
  });
});

describe('trace', () => {
  it('prints copies of the traffic of a queue through a temporary queue', async () => {
    const queue = uniqueQueue();
    const tracing = start(['trace', queue, '--count', '1', '--json', ...flags], 'tracing');
    await tracing.ready;
    const id = randomUUID();
    const published = await run(['publish', queue, '{"traced":true}', '--message-id', id, ...flags]);
    expect(published.code).toBe(0);
    const result = await tracing.done;
    expect(result.code).toBe(0);
    expect(result.stderr).toContain(`tracing trace-${queue}-`);
    const message = JSON.parse(lines(result.stdout)[0]!) as Record<string, unknown>;
    expect(message).toMatchObject({ uuid: id, body: '{"traced":true}', routingKey: queue });
    expect(String(message['queue'])).toMatch(new RegExp(`^trace-${queue}-`));
  });
});

describe('setup and policy-updates', () => {
  it('declares queues, publishes policy messages, and the policy worker applies them', async () => {
    const id = uid();
    const queue = `cli-test-lazy-${id}`;
    const policyExchange = `cli-test-policies-${id}`;
    const policyQueue = `cli-test-policy-updates-${id}`;
    created.queues.push(queue, policyQueue);
    created.exchanges.push(queue, policyExchange);
    created.policies.push(`${queue}_policy`, `${queue}_dead_letter_policy`);
    const topology = tempFile('topology.yml', `queues:\n  ${queue}:\n    lazy: true\n`);
    const policyFlags = [
      '--set',
      'update_queue_properties_synchronously=false',
      '--set',
      `beetle_policy_exchange_name=${policyExchange}`,
      '--set',
      `beetle_policy_updates_queue_name=${policyQueue}`,
    ];

    const setup = await run(['setup', '--topology', topology, ...flags, ...policyFlags]);
    expect(setup.code).toBe(0);
    for (const server of servers) expect(setup.stdout).toContain(`${server}: ok`);
    expect(setup.stdout).toContain(`${queue}: policy published`);
    expect(setup.stdout).toContain(`${policyQueue}: policy skipped`);

    // One policy message per broker, each naming the broker the queue was declared on.
    // The worker applies updates only for the queues it manages: those of the same topology.
    const worker = await run([
      'policy-updates',
      '--count',
      String(servers.length),
      '--topology',
      topology,
      ...flags,
      ...policyFlags,
    ]);
    expect(worker.code).toBe(0);
    for (const server of servers) {
      expect(worker.stdout).toContain(`applied policy update for ${queue} on ${server}`);
      const response = await management(server, 'GET', `/api/policies/%2F/${queue}_policy`);
      expect(response.status).toBe(200);
      const policy = (await response.json()) as { definition: Record<string, unknown>; pattern: string };
      expect(policy.definition).toEqual({ 'queue-mode': 'lazy' });
      expect(policy.pattern).toBe(`^${queue}$`);
    }
  });

  it('setup reports failures per broker and exits 1', async () => {
    const topology = tempFile('topology.json', JSON.stringify({ queues: { [uniqueQueue()]: {} } }));
    const result = await run([
      'setup',
      '--topology',
      topology,
      ...flags,
      '--servers',
      `${servers[0]},127.0.0.1:1`,
    ]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/127\.0\.0\.1:1: FAILED: .*ECONNREFUSED/);
    expect(result.stdout).toContain(`${servers[0]}: ok`);
  });
});

describe('status', () => {
  it('lists brokers with queue depths and the dedup store', async () => {
    const queue = uniqueQueue();
    expect((await run(['publish', queue, 'x', '--queue', queue, ...flags])).code).toBe(0);
    const topology = tempFile('topology.yml', `queues:\n  ${queue}: {}\n`);
    const result = await run(['status', '--json', '--scan', '--topology', topology, ...flags]);
    expect(result.code).toBe(0);
    const status = JSON.parse(result.stdout) as {
      brokers: { server: string; reachable: boolean; queues: { name: string; messages: number | null }[] }[];
      store: Record<string, unknown>;
    };
    expect(status.brokers.map((b) => b.server)).toEqual(servers);
    for (const broker of status.brokers) {
      expect(broker.reachable).toBe(true);
      expect(broker.queues.map((q) => q.name)).toContain(queue);
    }
    // The message went to one broker; the management API may lag a little, so only the sum is checked loosely.
    const depths = status.brokers.map((b) => b.queues.find((q) => q.name === queue)?.messages ?? 0);
    expect(depths.every((d) => d === 0 || d === 1)).toBe(true);
    expect(status.store).toMatchObject({ reachable: true, master: expect.any(String) as string, db: 10 });
    expect(typeof status.store['keys']).toBe('number');
    expect(typeof status.store['messages']).toBe('number');

    const text = await run(['status', '--topology', topology, ...flags]);
    expect(text.code).toBe(0);
    for (const server of servers) expect(text.stdout).toContain(`broker ${server}: up`);
    expect(text.stdout).toMatch(/dedup store .* db 10: up, \d+ keys/);
  });

  it('exits 1 when a broker is unreachable', async () => {
    const result = await run([
      'status',
      ...flags,
      '--servers',
      `${servers[0]},127.0.0.1:1`,
      '--timeout',
      '2',
    ]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/broker 127\.0\.0\.1:1: UNREACHABLE/);
  });
});
