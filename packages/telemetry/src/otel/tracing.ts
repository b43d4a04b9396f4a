import {
  SpanKind,
  SpanStatusCode,
  context,
  propagation,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
  type TracerProvider,
} from '@opentelemetry/api';
import type {
  CopyObservation,
  DeliveryInfo,
  DeliveryObservation,
  DeliveryResult,
  PublishInfo,
  PublishObservation,
  PublishResult,
  Telemetry,
} from '@beetle/core';

export interface OtelTelemetryOptions {
  /** Default: the global tracer provider (`trace.getTracerProvider()`), as registered by the SDK. */
  readonly tracerProvider?: TracerProvider;
}

/** The instrumentation scope of Beetle's spans. */
export const TRACER_NAME = '@beetle/telemetry';

/** AMQP header values as amqplib decodes them: strings, or buffers for byte strings. */
const headerGetter: TextMapGetter<Readonly<Record<string, unknown>>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const value = carrier[key];
    if (typeof value === 'string') return value;
    return Buffer.isBuffer(value) ? value.toString('utf8') : undefined;
  },
};

const errorType = (error: unknown): string =>
  typeof error === 'object' && error !== null && typeof (error as { reason?: unknown }).reason === 'string'
    ? (error as { reason: string }).reason
    : error instanceof Error
      ? error.name
      : typeof error;

function failed(span: Span, error: unknown): void {
  span.setAttribute('error.type', errorType(error));
  if (error instanceof Error) span.recordException(error);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : String(error),
  });
}

const serverAttributes = (server: string): Attributes => {
  const colon = server.lastIndexOf(':');
  return { 'server.address': server.slice(0, colon), 'server.port': Number(server.slice(colon + 1)) };
};

class CopySpan implements CopyObservation {
  constructor(private readonly span: Span) {}

  end(error?: unknown): void {
    if (error !== undefined) failed(this.span, error);
    this.span.end();
  }
}

class PublishSpan implements PublishObservation {
  readonly headers: Record<string, string> = {};

  constructor(
    private readonly tracer: Tracer,
    private readonly info: PublishInfo,
    private readonly span: Span,
    private readonly context: Context,
  ) {
    // Once for the message: both copies carry the logical publish's context.
    propagation.inject(context, this.headers);
  }

  copy(server: string): CopyObservation {
    const span = this.tracer.startSpan(
      `send ${this.info.exchange}`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'send',
          'messaging.destination.name': this.info.exchange,
          'messaging.rabbitmq.destination.routing_key': this.info.routingKey,
          'messaging.message.id': this.info.messageId,
          ...serverAttributes(server),
        },
      },
      this.context,
    );
    return new CopySpan(span);
  }

  end(result: PublishResult): void {
    this.span.setAttribute('beetle.copies', result.servers.length);
    if (result.error !== undefined) failed(this.span, result.error);
    this.span.end();
  }
}

class DeliverySpan implements DeliveryObservation {
  constructor(
    private readonly span: Span,
    private readonly context: Context,
  ) {}

  run<T>(fn: () => T): T {
    return context.with(this.context, fn);
  }

  step(name: string, durationMs: number, error?: unknown): void {
    this.span.addEvent(`beetle.store.${name}`, {
      'beetle.duration_ms': durationMs,
      ...(error === undefined ? {} : { 'error.type': errorType(error) }),
    });
  }

  handled(durationMs: number, error?: unknown): void {
    this.span.addEvent('beetle.handler', {
      'beetle.duration_ms': durationMs,
      ...(error === undefined ? {} : { 'error.type': errorType(error) }),
    });
  }

  end(result: DeliveryResult): void {
    this.span.setAttributes({
      'beetle.outcome': result.outcome ?? 'abandoned',
      'beetle.attempt': result.attempt,
      'beetle.duplicate': result.duplicate,
    });
    if (result.error !== undefined) failed(this.span, result.error);
    this.span.end();
  }
}

/**
 * Traces on OpenTelemetry, after the messaging semantic conventions for RabbitMQ: a PRODUCER span `publish
 * <exchange>` per logical publish with a CLIENT span `send <exchange>` per broker copy (its duration is the
 * confirm latency), and a CONSUMER span `process <queue>` per delivery, a child of the producer's context
 * carried in the `traceparent`/`tracestate` headers (and linked to it), with the outcome, the attempt and
 * whether it was a duplicate; store steps and the handler are events on it. The handler runs in its context.
 */
export function otelTelemetry(options: OtelTelemetryOptions = {}): Telemetry {
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer(TRACER_NAME);
  return {
    publish(info) {
      const parent = context.active();
      const span = tracer.startSpan(
        `publish ${info.exchange}`,
        {
          kind: SpanKind.PRODUCER,
          attributes: {
            'messaging.system': 'rabbitmq',
            'messaging.operation.type': 'send',
            'messaging.operation.name': 'publish',
            'messaging.destination.name': info.exchange,
            'messaging.rabbitmq.destination.routing_key': info.routingKey,
            'messaging.message.id': info.messageId,
            'beetle.message': info.message,
            'beetle.redundant': info.redundant,
          },
        },
        parent,
      );
      return new PublishSpan(tracer, info, span, trace.setSpan(parent, span));
    },

    delivery(info: DeliveryInfo) {
      // Without trace headers the span joins whatever is active (e.g. an amqplib instrumentation's span).
      const producer = propagation.extract(context.active(), info.headers ?? {}, headerGetter);
      const producerSpan = trace.getSpanContext(producer);
      const span = tracer.startSpan(
        `process ${info.amqpQueue}`,
        {
          kind: SpanKind.CONSUMER,
          attributes: {
            'messaging.system': 'rabbitmq',
            'messaging.operation.type': 'process',
            'messaging.operation.name': 'process',
            'messaging.destination.name': info.amqpQueue,
            'messaging.rabbitmq.destination.routing_key': info.routingKey,
            'messaging.message.body.size': info.bodySize,
            ...(info.messageId === undefined ? {} : { 'messaging.message.id': info.messageId }),
            'beetle.queue': info.queue,
            'beetle.redelivered': info.redelivered,
            ...serverAttributes(info.server),
          },
          links: producerSpan === undefined ? [] : [{ context: producerSpan }],
        },
        producer,
      );
      return new DeliverySpan(span, trace.setSpan(producer, span));
    },
  };
}
