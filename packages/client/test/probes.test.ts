import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, liveness, readiness, type ClientHealth } from '@beetle/client';
import { startBroker, startRedis, type ServiceHandle } from '@beetle/test-services';

// Own services (the helper's port range): AMQP 8152 has its management API on 18152.
const BROKER_PORT = 8152;
const REDIS_PORT = 18160;

const healthy: ClientHealth = {
  stopped: false,
  publisherHealthy: true,
  liveServers: ['a:5672', 'b:5672'],
  deadServers: [],
  publishing: [
    { server: 'a:5672', reachable: true },
    { server: 'b:5672', reachable: false, error: 'ECONNREFUSED' },
  ],
  subscriber: [],
  listening: [{ queue: 'orders', paused: false, consumingOn: ['a:5672'] }],
  store: { ok: true },
  eventLoopDelayMs: 12,
};

describe('liveness and readiness rules', () => {
  it('one reachable broker and one consumer per queue are enough to be ready', () => {
    expect(readiness(healthy)).toEqual({ ok: true, reasons: [] });
    expect(liveness(healthy)).toEqual({ ok: true, reasons: [] });
  });

  it('a Redis outage fails readiness, not liveness', () => {
    const health = { ...healthy, store: { ok: false, reason: 'timeout', error: 'no answer within 1000 ms' } };
    expect(readiness(health)).toEqual({
      ok: false,
      reasons: ['dedup store unavailable (no answer within 1000 ms)'],
    });
    expect(liveness(health).ok).toBe(true);
  });

  it('no broker for publishing, an unconsumed queue and a stopped client fail readiness; paused queues do not', () => {
    const health: ClientHealth = {
      ...healthy,
      stopped: true,
      publishing: [{ server: 'a:5672', reachable: false, error: 'ECONNREFUSED' }],
      listening: [
        { queue: 'orders', paused: false, consumingOn: [] },
        { queue: 'audit', paused: true, consumingOn: [] },
      ],
    };
    expect(readiness(health).reasons).toEqual(['client stopped']);
    expect(readiness({ ...health, stopped: false }).reasons).toEqual([
      'no broker reachable for publishing (a:5672: ECONNREFUSED)',
      'queue orders not consumed on any broker',
    ]);
    // A graceful shutdown is not cut short by a liveness restart.
    expect(liveness(health).ok).toBe(true);
    // Publishing not checked (a consumer-only client): no publishing reason.
    expect(readiness({ ...healthy, publishing: undefined }).ok).toBe(true);
  });

  it('a blocked event loop or a store closed under a running client fail liveness', () => {
    expect(liveness({ ...healthy, eventLoopDelayMs: 6000 }).reasons).toEqual([
      'event loop blocked for 6000 ms (limit 5000 ms)',
    ]);
    expect(liveness({ ...healthy, eventLoopDelayMs: 6000 }, { maxEventLoopDelay: 10 }).ok).toBe(true);
    const closed = { ...healthy, store: { ok: false, reason: 'closed', error: 'closed' } };
    expect(liveness(closed).reasons).toEqual(['dedup store closed while the client runs']);
    expect(liveness({ ...closed, stopped: true }).ok).toBe(true);
  });
});

const waitFor = async (
  what: string,
  predicate: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe('probes on real services', () => {
  let broker: ServiceHandle;
  let redis: ServiceHandle;
  let client: Client;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    [broker, redis] = await Promise.all([startBroker(BROKER_PORT), startRedis(REDIS_PORT)]);
    client = new Client({
      config: {
        servers: broker.address,
        redisServer: redis.address,
        redisDb: 0,
        subscriberReconnectDelay: 0.5,
        subscriberReconnectMaxDelay: 1,
        // Consumers wait this long for Redis before giving up on a message: longer than the outage here.
        redisFailoverTimeout: 120,
      },
    })
      .queue('probes')
      .message('probes');
    client.handler('probes', () => undefined);
    // The wiring of the client README.
    server = createServer((req, res) => {
      const probe =
        req.url === '/livez'
          ? Promise.resolve(client.liveness())
          : req.url === '/readyz'
            ? client.readiness()
            : undefined;
      if (probe === undefined) {
        res.writeHead(404).end();
        return;
      }
      probe.then(
        ({ ok, reasons }) => {
          res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
          res.end(ok ? 'ok\n' : `${reasons.join('\n')}\n`);
        },
        (error: unknown) => res.writeHead(500).end(String(error)),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }, 180_000);

  afterAll(async () => {
    server?.close();
    await client?.stop({ timeout: 1 });
    await Promise.all([broker?.stop(), redis?.stop()]);
  }, 180_000);

  const get = async (path: string): Promise<{ status: number; body: string }> => {
    const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(5000) });
    return { status: response.status, body: await response.text() };
  };

  it('readiness follows Redis and the broker, liveness stays ok; stop() ends readiness', async () => {
    // Before listening and publishing: nothing to check but the (not yet created) store.
    expect((await client.health()).publishing).toBeUndefined();
    await client.listen();
    expect(await client.publish('probes', 'hello')).toBe(1);
    await waitFor('ready', async () => (await client.readiness()).ok);
    const health = await client.health();
    expect(health.publishing).toEqual([{ server: broker.address, reachable: true }]);
    expect(health.listening).toEqual([{ queue: 'probes', paused: false, consumingOn: [broker.address] }]);
    expect(health.store).toEqual({ ok: true });
    expect(await get('/livez')).toEqual({ status: 200, body: 'ok\n' });
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });

    // Redis down: not ready (within the 1 s health timeout, although a ping retries for 120 s), still live.
    await redis.stop();
    const down = await get('/readyz');
    expect(down.status).toBe(503);
    expect(down.body).toMatch(/^dedup store unavailable \(/);
    expect(await get('/livez')).toEqual({ status: 200, body: 'ok\n' });
    expect((await client.health()).store).toMatchObject({ ok: false, reason: 'timeout' });
    await redis.start();
    await waitFor('ready after Redis came back', async () => (await get('/readyz')).status === 200);

    // The only broker down: nothing to publish to, the queue consumed nowhere; still live.
    await broker.stop();
    await waitFor('not ready without a broker', async () => (await get('/readyz')).status === 503);
    const noBroker = await client.readiness();
    expect(noBroker.reasons).toEqual([
      expect.stringMatching(/^no broker reachable for publishing \(127\.0\.0\.1:8152: /) as string,
      'queue probes not consumed on any broker',
    ]);
    expect(await get('/livez')).toEqual({ status: 200, body: 'ok\n' });
    await broker.start();
    await waitFor('ready after the broker came back', async () => (await client.readiness()).ok);

    await client.pauseListening(['probes']);
    expect((await client.readiness()).ok).toBe(true);
    await client.resumeListening(['probes']);

    await client.stop({ timeout: 1 });
    expect(await client.readiness()).toEqual({ ok: false, reasons: ['client stopped'] });
    expect(client.liveness()).toEqual({ ok: true, reasons: [] });
  }, 150_000);
});
