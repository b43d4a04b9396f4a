import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
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

export interface BeetleMetricsOptions {
  /** The registry the metrics are registered with (never prom-client's global one). */
  readonly registry: Registry;
  /** Prefix of every metric name (default `beetle_`). */
  readonly prefix?: string;
}

/** What `watch` reads at scrape time (the shapes of `Publisher`, `Subscriber` and a `DedupStore`). */
export interface WatchTargets {
  readonly publisher?: {
    readonly config: { readonly servers: readonly string[] };
    liveServers(): string[];
  };
  readonly subscriber?: {
    status(): readonly { readonly server: string; readonly state: string }[];
  };
  readonly store?: { ping?(): Promise<void> };
  /** How long a scrape waits for the store's ping before reporting Redis down (ms, default 1000). */
  readonly pingTimeoutMs?: number;
}

const outcomeOfCopy = (error: unknown): string => {
  if (error === undefined) return 'confirmed';
  return typeof error === 'object' &&
    error !== null &&
    (error as { outcomeUnknown?: unknown }).outcomeUnknown === true
    ? 'outcome_unknown'
    : 'failed';
};

/**
 * Prometheus metrics for a Beetle process, on prom-client, registered with the `registry` given. Pass the
 * result as the `telemetry` of the publisher and the subscriber (or combine it with tracing), and `watch` the
 * objects whose state is read at scrape time.
 */
export class BeetleMetrics implements Telemetry {
  readonly publishes: Counter<'message' | 'result'>;
  readonly publishCopies: Counter<'server' | 'outcome'>;
  readonly publishDuration: Histogram<'message'>;
  readonly publishesInFlight: Gauge;
  readonly deliveries: Counter<'queue' | 'outcome'>;
  readonly duplicates: Counter<'queue'>;
  readonly handlerDuration: Histogram<'queue'>;
  readonly handlersInFlight: Gauge<'queue'>;
  readonly storeDuration: Histogram<'step' | 'result'>;
  readonly brokerUp: Gauge<'server' | 'role'>;
  readonly redisUp: Gauge;
  private readonly watched: WatchTargets[] = [];

  constructor(options: BeetleMetricsOptions) {
    const prefix = options.prefix ?? 'beetle_';
    const registers = [options.registry];
    this.publishes = new Counter({
      name: `${prefix}publishes_total`,
      help: 'Logical publishes, by message and result (ok: every copy confirmed; partial: one of two; failed)',
      labelNames: ['message', 'result'],
      registers,
    });
    this.publishCopies = new Counter({
      name: `${prefix}publish_copies_total`,
      help: 'Copies written to a broker, by outcome (confirmed, failed, outcome_unknown: written, not confirmed)',
      labelNames: ['server', 'outcome'],
      registers,
    });
    this.publishDuration = new Histogram({
      name: `${prefix}publish_duration_seconds`,
      help: 'From publish() to the last confirm (or the failure)',
      labelNames: ['message'],
      buckets: [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.publishesInFlight = new Gauge({
      name: `${prefix}publishes_in_flight`,
      help: 'Publishes started and not finished',
      registers,
    });
    this.deliveries = new Counter({
      name: `${prefix}deliveries_total`,
      help: 'Deliveries processed, by queue and outcome (abandoned: left for redelivery by a forced stop)',
      labelNames: ['queue', 'outcome'],
      registers,
    });
    this.duplicates = new Counter({
      name: `${prefix}duplicates_suppressed_total`,
      help: 'Deliveries acknowledged without running the handler: the message was already handled',
      labelNames: ['queue'],
      registers,
    });
    this.handlerDuration = new Histogram({
      name: `${prefix}handler_duration_seconds`,
      help: 'Handler run time',
      labelNames: ['queue'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.handlersInFlight = new Gauge({
      name: `${prefix}handlers_in_flight`,
      help: 'Handlers running',
      labelNames: ['queue'],
      registers,
    });
    this.storeDuration = new Histogram({
      name: `${prefix}store_step_duration_seconds`,
      help: 'Dedup store round trips, by step (claim, complete, acknowledged, ...) and result',
      labelNames: ['step', 'result'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 180],
      registers,
    });
    const watched = this.watched;
    this.brokerUp = new Gauge({
      name: `${prefix}broker_up`,
      help: 'Whether a broker is usable: in the publisher rotation (role publisher), consuming (role consumer)',
      labelNames: ['server', 'role'],
      registers,
      collect() {
        this.reset();
        for (const { publisher, subscriber } of watched) {
          if (publisher !== undefined) {
            const live = new Set(publisher.liveServers());
            for (const server of publisher.config.servers) {
              this.set({ server, role: 'publisher' }, live.has(server) ? 1 : 0);
            }
          }
          for (const broker of subscriber?.status() ?? []) {
            this.set({ server: broker.server, role: 'consumer' }, broker.state === 'consuming' ? 1 : 0);
          }
        }
      },
    });
    this.redisUp = new Gauge({
      name: `${prefix}redis_up`,
      help: 'Whether the dedup store answered a ping within the scrape (1) or not (0)',
      registers,
      async collect() {
        const stores = watched.filter((w) => w.store?.ping !== undefined);
        if (stores.length === 0) return;
        const answers = await Promise.all(stores.map((w) => pingWithin(w.store!, w.pingTimeoutMs ?? 1000)));
        this.set(answers.every(Boolean) ? 1 : 0);
      },
    });
  }

  /** Reads the state of these objects at every scrape (broker and Redis gauges). */
  watch(targets: WatchTargets): this {
    this.watched.push(targets);
    return this;
  }

  publish(info: PublishInfo): PublishObservation {
    this.publishesInFlight.inc();
    return new PublishMetrics(this, info, performance.now());
  }

  delivery(info: DeliveryInfo): DeliveryObservation {
    return new DeliveryMetrics(this, info.queue);
  }
}

async function pingWithin(store: { ping?(): Promise<void> }, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([store.ping!().then(() => true as const), late]);
  } catch {
    return false; // an unreachable store is what this gauge reports
  } finally {
    clearTimeout(timer);
  }
}

class PublishMetrics implements PublishObservation {
  readonly headers = undefined;

  constructor(
    private readonly metrics: BeetleMetrics,
    private readonly info: PublishInfo,
    private readonly started: number,
  ) {}

  copy(server: string): CopyObservation {
    const { publishCopies } = this.metrics;
    return { end: (error?: unknown) => publishCopies.inc({ server, outcome: outcomeOfCopy(error) }) };
  }

  end(result: PublishResult): void {
    const { metrics, info } = this;
    metrics.publishesInFlight.dec();
    const wanted = info.redundant ? 2 : 1;
    const outcome =
      result.servers.length === 0 ? 'failed' : result.servers.length < wanted ? 'partial' : 'ok';
    metrics.publishes.inc({ message: info.message, result: outcome });
    metrics.publishDuration.observe({ message: info.message }, (performance.now() - this.started) / 1000);
  }
}

class DeliveryMetrics implements DeliveryObservation {
  private running = false;

  constructor(
    private readonly metrics: BeetleMetrics,
    private readonly queue: string,
  ) {}

  run<T>(fn: () => T): T {
    this.running = true;
    this.metrics.handlersInFlight.inc({ queue: this.queue });
    return fn();
  }

  step(name: string, durationMs: number, error?: unknown): void {
    this.metrics.storeDuration.observe(
      { step: name, result: error === undefined ? 'ok' : 'error' },
      durationMs / 1000,
    );
  }

  handled(durationMs: number): void {
    this.stopRunning();
    this.metrics.handlerDuration.observe({ queue: this.queue }, durationMs / 1000);
  }

  end(result: DeliveryResult): void {
    this.stopRunning();
    const { metrics, queue } = this;
    metrics.deliveries.inc({ queue, outcome: result.outcome ?? 'abandoned' });
    if (result.duplicate) metrics.duplicates.inc({ queue });
  }

  private stopRunning(): void {
    if (!this.running) return;
    this.running = false;
    this.metrics.handlersInFlight.dec({ queue: this.queue });
  }
}

/** Prometheus metrics on `registry` (see `BeetleMetrics`). */
export const beetleMetrics = (options: BeetleMetricsOptions): BeetleMetrics => new BeetleMetrics(options);
