/**
 * Telemetry on real traffic: redundant messages published to two real brokers and consumed with the Redis
 * store, traced with the OpenTelemetry SDK's in-memory exporter and counted with prom-client.
 */
import { randomBytes } from 'node:crypto';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Client, RedisDedupStore } from '@beetle/client';
import type { Telemetry } from '@beetle/core';
import { otelTelemetry } from '@beetle/telemetry/otel';
import { beetleMetrics } from '@beetle/telemetry/prometheus';
import { resolveServices, type TestServices } from '@beetle/test-services';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
let services: TestServices;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  services = await resolveServices();
});
afterAll(() => {
  context.disable();
  propagation.disable();
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  exporter.reset();
});

/** Deletes the queue and exchange the test made on both brokers. */
async function deleteTopology(name: string): Promise<void> {
  await Promise.all(
    services.servers.slice(0, 2).flatMap((server) =>
      [`queues/%2F/${name}`, `exchanges/%2F/${name}`].map((path) =>
        fetch(`http://127.0.0.1:${services.managementPort(server)}/api/${path}`, {
          method: 'DELETE',
          headers: { authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
        }),
      ),
    ),
  );
}

async function until(done: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function client(name: string, telemetry: Telemetry) {
  const config = { servers: services.servers.slice(0, 2).join(','), redisServer: services.redis };
  const store = new RedisDedupStore({ redisServer: services.redis });
  const c = new Client({ config, store, telemetry }).queue(name).message(name, { redundant: true });
  cleanups.push(
    () => store.close(),
    () => deleteTopology(name),
  );
  return { client: c, store };
}

describe('telemetry on real brokers and Redis', () => {
  it('a redundant message is one trace: the publish, its two copies, the processing and the duplicate', async () => {
    const name = `beetle-otel-${randomBytes(4).toString('hex')}`;
    const { client: c } = client(name, otelTelemetry({ tracerProvider: provider }));
    let handlerSpan: string | undefined;
    let copies = 0;
    c.handler(name, () => {
      // A span the handler starts nests under the processing span.
      const span = provider.getTracer('user').startSpan('user work');
      handlerSpan = span.spanContext().spanId;
      span.end();
    });
    c.subscriber.on('processed', () => copies++);
    await c.listen();
    cleanups.push(() => c.stop());
    expect(await c.publish(name, { n: 1 })).toBe(2);
    await until(() => copies === 2);

    const spans = exporter.getFinishedSpans();
    const producer = spans.filter((s) => s.kind === SpanKind.PRODUCER);
    expect(producer).toHaveLength(1);
    const traceId = producer[0]!.spanContext().traceId;
    const sends = spans.filter((s) => s.kind === SpanKind.CLIENT);
    expect(
      sends
        .map((s) => `${String(s.attributes['server.address'])}:${String(s.attributes['server.port'])}`)
        .sort(),
    ).toEqual(services.servers.slice(0, 2).sort());
    const processing = spans.filter((s) => s.kind === SpanKind.CONSUMER);
    expect(processing).toHaveLength(2);
    for (const span of [...sends, ...processing]) expect(span.spanContext().traceId).toBe(traceId);
    const worked = processing.filter((s) => s.attributes['beetle.duplicate'] === false);
    const duplicate = processing.filter((s) => s.attributes['beetle.duplicate'] === true);
    expect(worked).toHaveLength(1);
    expect(duplicate).toHaveLength(1);
    expect(worked[0]!.attributes).toMatchObject({ 'beetle.outcome': 'OK', 'beetle.attempt': 1 });
    expect(duplicate[0]!.attributes).toMatchObject({ 'beetle.outcome': 'OK', 'beetle.attempt': 0 });
    expect(worked[0]!.events.map((e) => e.name)).toEqual(
      expect.arrayContaining(['beetle.store.claim', 'beetle.handler']),
    );
    const user = spans.find((s) => s.name === 'user work')!;
    expect(user.spanContext().spanId).toBe(handlerSpan);
    expect(user.parentSpanContext?.spanId).toBe(worked[0]!.spanContext().spanId);
    expect(trace.getActiveSpan()).toBeUndefined();
  });

  it('the metrics move with real traffic and show the brokers and Redis', async () => {
    const name = `beetle-metrics-${randomBytes(4).toString('hex')}`;
    const registry = new Registry();
    const metrics = beetleMetrics({ registry });
    const { client: c, store } = client(name, metrics);
    let copies = 0;
    let runs = 0;
    c.handler(name, async () => {
      runs++;
      if (runs === 1) await new Promise((resolve) => setTimeout(resolve, 30));
    });
    c.subscriber.on('processed', () => copies++);
    await c.listen();
    cleanups.push(() => c.stop());
    metrics.watch({ publisher: c.publisher, subscriber: c.subscriber, store });
    for (let i = 0; i < 5; i++) expect(await c.publish(name, { i })).toBe(2);
    await until(() => copies === 10);

    const text = await registry.metrics();
    const value = (pattern: RegExp): number => Number(pattern.exec(text)?.[1] ?? Number.NaN);
    expect(value(new RegExp(`beetle_publishes_total\\{message="${name}",result="ok"\\} (\\d+)`))).toBe(5);
    for (const server of services.servers.slice(0, 2)) {
      expect(
        value(new RegExp(`beetle_publish_copies_total\\{server="${server}",outcome="confirmed"\\} (\\d+)`)),
      ).toBe(5);
      expect(text).toContain(`beetle_broker_up{server="${server}",role="publisher"} 1`);
      expect(text).toContain(`beetle_broker_up{server="${server}",role="consumer"} 1`);
    }
    expect(value(new RegExp(`beetle_deliveries_total\\{queue="${name}",outcome="OK"\\} (\\d+)`))).toBe(10);
    expect(value(new RegExp(`beetle_duplicates_suppressed_total\\{queue="${name}"\\} (\\d+)`))).toBe(5);
    expect(value(new RegExp(`beetle_handler_duration_seconds_count\\{queue="${name}"\\} (\\d+)`))).toBe(5);
    // The first run waited 30 ms: it is in the 0.05 s bucket, not below.
    expect(
      value(new RegExp(`beetle_handler_duration_seconds_bucket\\{le="0.025",queue="${name}"\\} (\\d+)`)),
    ).toBe(4);
    expect(
      value(/beetle_store_step_duration_seconds_count\{step="claim",result="ok"\} (\d+)/),
    ).toBeGreaterThanOrEqual(5);
    expect(text).toContain('beetle_redis_up 1');
    expect(text).toContain('beetle_publishes_in_flight 0');
  });
});
