/** The adapters driven by hand (no brokers): what they record for given observations. */
import { context, propagation, trace, SpanKind } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { combineTelemetry } from '@beetle/telemetry';
import { otelTelemetry } from '@beetle/telemetry/otel';
import { beetleMetrics } from '@beetle/telemetry/prometheus';
import { BrokerError } from '@beetle/core';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
});
afterAll(() => {
  context.disable();
  propagation.disable();
});
beforeEach(() => exporter.reset());

const publishInfo = {
  message: 'order.created',
  exchange: 'orders',
  routingKey: 'order.created',
  messageId: 'id-1',
  redundant: true,
};

const deliveryInfo = (headers: Record<string, unknown>, server: string) => ({
  queue: 'orders',
  amqpQueue: 'orders',
  server,
  exchange: 'orders',
  routingKey: 'order.created',
  messageId: 'id-1',
  headers,
  redelivered: false,
  bodySize: 10,
});

describe('otelTelemetry', () => {
  it('one publish trace with a span per copy, and consumer spans in the same trace under the producer', () => {
    const telemetry = otelTelemetry({ tracerProvider: provider });
    const publish = telemetry.publish!(publishInfo)!;
    expect(publish.headers?.['traceparent']).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    publish.copy('rabbit1:5672')!.end();
    publish.copy('rabbit2:5672')!.end(new BrokerError('broker-closed', 'rabbit2:5672', 'gone'));
    publish.end({ servers: ['rabbit1:5672'] });

    // Both copies carry the same headers: two deliveries, one did the work.
    let nested: string | undefined;
    const first = telemetry.delivery!(deliveryInfo({ ...publish.headers }, 'rabbit1:5672'))!;
    first.run(() => {
      nested = trace.getActiveSpan()?.spanContext().spanId;
    });
    first.step('claim', 1.5);
    first.handled(3);
    first.end({ outcome: 'OK', attempt: 1, duplicate: false });
    const second = telemetry.delivery!(deliveryInfo({ ...publish.headers }, 'rabbit2:5672'))!;
    second.end({ outcome: 'OK', attempt: 0, duplicate: true });

    const spans = exporter.getFinishedSpans();
    const producer = spans.find((s) => s.kind === SpanKind.PRODUCER)!;
    const copies = spans.filter((s) => s.kind === SpanKind.CLIENT);
    const consumers = spans.filter((s) => s.kind === SpanKind.CONSUMER);
    expect(producer.name).toBe('publish orders');
    expect(producer.attributes).toMatchObject({
      'messaging.system': 'rabbitmq',
      'messaging.destination.name': 'orders',
      'messaging.rabbitmq.destination.routing_key': 'order.created',
      'messaging.message.id': 'id-1',
      'beetle.redundant': true,
      'beetle.copies': 1,
    });
    expect(copies.map((s) => s.attributes['server.address']).sort()).toEqual(['rabbit1', 'rabbit2']);
    expect(copies.find((s) => s.attributes['server.address'] === 'rabbit2')?.attributes['error.type']).toBe(
      'broker-closed',
    );
    const traceId = producer.spanContext().traceId;
    for (const span of [...copies, ...consumers]) expect(span.spanContext().traceId).toBe(traceId);
    for (const span of consumers) {
      expect(span.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
      expect(span.links[0]?.context.spanId).toBe(producer.spanContext().spanId);
    }
    const worked = consumers.find((s) => s.attributes['beetle.duplicate'] === false)!;
    expect(worked.attributes).toMatchObject({ 'beetle.outcome': 'OK', 'beetle.attempt': 1 });
    expect(worked.events.map((e) => e.name)).toEqual(['beetle.store.claim', 'beetle.handler']);
    expect(nested).toBe(worked.spanContext().spanId);
    expect(consumers.filter((s) => s.attributes['beetle.duplicate'] === true)).toHaveLength(1);
  });

  it('a delivery without trace headers starts its own trace', () => {
    const telemetry = otelTelemetry({ tracerProvider: provider });
    telemetry.delivery!(deliveryInfo({ format_version: '1' }, 'rabbit1:5672'))!.end({
      outcome: 'Ancient',
      attempt: 0,
      duplicate: false,
    });
    const [span] = exporter.getFinishedSpans();
    expect(span?.parentSpanContext).toBeUndefined();
    expect(span?.links).toEqual([]);
  });
});

describe('beetleMetrics', () => {
  it('counts publishes, copies by outcome, deliveries, duplicates and handler time on the given registry', async () => {
    const registry = new Registry();
    const metrics = beetleMetrics({ registry });
    const publish = metrics.publish(publishInfo);
    publish.copy('a:1')!.end();
    publish
      .copy('b:1')!
      .end(new BrokerError('broker-timeout', 'b:1', 'no confirm', { outcomeUnknown: true }));
    publish.end({ servers: ['a:1'] });
    const delivery = metrics.delivery(deliveryInfo({}, 'a:1'));
    delivery.run(() => undefined);
    delivery.step('claim', 2);
    delivery.handled(5);
    delivery.end({ outcome: 'OK', attempt: 1, duplicate: false });
    metrics.delivery(deliveryInfo({}, 'b:1')).end({ outcome: 'OK', attempt: 0, duplicate: true });

    const text = await registry.metrics();
    expect(text).toContain('beetle_publishes_total{message="order.created",result="partial"} 1');
    expect(text).toContain('beetle_publish_copies_total{server="a:1",outcome="confirmed"} 1');
    expect(text).toContain('beetle_publish_copies_total{server="b:1",outcome="outcome_unknown"} 1');
    expect(text).toContain('beetle_deliveries_total{queue="orders",outcome="OK"} 2');
    expect(text).toContain('beetle_duplicates_suppressed_total{queue="orders"} 1');
    expect(text).toContain('beetle_handler_duration_seconds_count{queue="orders"} 1');
    expect(text).toContain('beetle_store_step_duration_seconds_count{step="claim",result="ok"} 1');
    expect(text).toContain('beetle_handlers_in_flight{queue="orders"} 0');
    expect(text).toContain('beetle_publishes_in_flight 0');
  });

  it('reads broker and Redis state at scrape time', async () => {
    const registry = new Registry();
    let answering = true;
    beetleMetrics({ registry }).watch({
      publisher: { config: { servers: ['a:1', 'b:1'] }, liveServers: () => ['a:1'] },
      subscriber: {
        status: () => [
          { server: 'a:1', state: 'consuming' },
          { server: 'b:1', state: 'disconnected' },
        ],
      },
      store: { ping: () => (answering ? Promise.resolve() : new Promise(() => undefined)) },
      pingTimeoutMs: 50,
    });
    let text = await registry.metrics();
    expect(text).toContain('beetle_broker_up{server="a:1",role="publisher"} 1');
    expect(text).toContain('beetle_broker_up{server="b:1",role="publisher"} 0');
    expect(text).toContain('beetle_broker_up{server="b:1",role="consumer"} 0');
    expect(text).toContain('beetle_redis_up 1');
    answering = false;
    text = await registry.metrics();
    expect(text).toContain('beetle_redis_up 0');
  });

  it('combineTelemetry feeds both, with the tracing headers', () => {
    const registry = new Registry();
    const both = combineTelemetry(otelTelemetry({ tracerProvider: provider }), beetleMetrics({ registry }));
    const publish = both.publish!(publishInfo)!;
    expect(publish.headers?.['traceparent']).toBeDefined();
    publish.copy('a:1')!.end();
    publish.end({ servers: ['a:1'] });
    expect(exporter.getFinishedSpans().length).toBe(2);
  });
});
