import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { BrokerStatus } from '@beetle/subscriber';

export interface StoreHealth {
  readonly ok: boolean;
  readonly error?: string;
  /** The `BeetleError` reason of the failure (`no-redis-master`, `closed`, `timeout` when it did not answer). */
  readonly reason?: string;
}

/** Whether one broker accepts publishes right now (its publishing channel is open or could be opened). */
export interface PublishingHealth {
  readonly server: string;
  readonly reachable: boolean;
  readonly error?: string;
}

/** One queue the subscriber listens to, and the brokers it consumes it on. */
export interface QueueHealth {
  readonly queue: string;
  /** Paused with `pauseListening`: not consuming on purpose. */
  readonly paused: boolean;
  readonly consumingOn: readonly string[];
}

export interface ClientHealth {
  /** `stop()` was called. */
  readonly stopped: boolean;
  /** No publisher connection recorded a background error recently (Ruby `publisher_healthy?`). */
  readonly publisherHealthy: boolean;
  readonly liveServers: readonly string[];
  readonly deadServers: readonly string[];
  /**
   * Each configured broker, tried for publishing within the health timeout; undefined when publishing was not
   * checked (the client has not published and `health({ publishing: true })` was not asked).
   */
  readonly publishing: readonly PublishingHealth[] | undefined;
  readonly subscriber: readonly BrokerStatus[];
  /** The queues listened to (empty before `listen`). */
  readonly listening: readonly QueueHealth[];
  /** The store's `ping` (undefined: no store yet, or a store without a health check). */
  readonly store: StoreHealth | undefined;
  /** The longest event-loop delay (ms) since the previous health check (0 on the first one). */
  readonly eventLoopDelayMs: number;
}

export interface HealthOptions {
  /** Seconds each check (store ping, publishing connection) may take before it counts as failed (default 1). */
  readonly timeout?: number;
  /**
   * Check publishing: `true` always (opens the publishing connection on first use, which later publishes
   * reuse), `false` never. Default: once the client has a publisher (it published, or used `client.publisher`).
   */
  readonly publishing?: boolean;
}

/** A probe's verdict: `ok`, else why not (one line each). */
export interface ProbeResult {
  readonly ok: boolean;
  readonly reasons: readonly string[];
}

export interface LivenessOptions {
  /** Seconds of event-loop delay above which the process counts as wedged (default 5). */
  readonly maxEventLoopDelay?: number;
}

const verdict = (reasons: string[]): ProbeResult => ({ ok: reasons.length === 0, reasons });

/**
 * Kubernetes `/livez`: fails only when restarting the process would help. The event loop was blocked longer
 * than `maxEventLoopDelay`, or the store was closed under a running client (nothing reopens it). Broker and
 * Redis outages never fail it: the client reconnects and consumers wait for Redis by design, and a restart
 * would only lose in-flight work. A stopped client stays live, so a graceful shutdown is not cut short.
 */
export function liveness(
  health: Pick<ClientHealth, 'stopped' | 'store' | 'eventLoopDelayMs'>,
  options: LivenessOptions = {},
): ProbeResult {
  const reasons: string[] = [];
  const maxMs = (options.maxEventLoopDelay ?? 5) * 1000;
  if (health.eventLoopDelayMs > maxMs) {
    reasons.push(`event loop blocked for ${Math.round(health.eventLoopDelayMs)} ms (limit ${maxMs} ms)`);
  }
  if (!health.stopped && health.store?.reason === 'closed') {
    reasons.push('dedup store closed while the client runs');
  }
  return verdict(reasons);
}

/**
 * Kubernetes `/readyz`: the client can do its work now. Not stopped (`stop()` called); when publishing is checked, at least one
 * broker reachable for publishing; for every queue listened to (and not paused), a consumer on at least one
 * broker; the store answering its ping. A Redis outage fails it (and not liveness).
 */
export function readiness(health: ClientHealth): ProbeResult {
  // What a stopped client no longer consumes or connects to follows from the stop: one reason.
  if (health.stopped) return verdict(['client stopped']);
  const reasons: string[] = [];
  if (health.publishing !== undefined && !health.publishing.some((b) => b.reachable)) {
    const errors = health.publishing.map((b) => `${b.server}: ${b.error ?? 'unreachable'}`);
    reasons.push(`no broker reachable for publishing (${errors.join('; ')})`);
  }
  for (const queue of health.listening) {
    if (!queue.paused && queue.consumingOn.length === 0) {
      reasons.push(`queue ${queue.queue} not consumed on any broker`);
    }
  }
  if (health.store !== undefined && !health.store.ok) {
    reasons.push(`dedup store unavailable (${health.store.error ?? health.store.reason ?? 'unknown'})`);
  }
  return verdict(reasons);
}

/**
 * The longest event-loop delay between two reads, from Node's sampling histogram (no JS timer of ours).
 * Started on the first read, so a client that is never probed measures nothing.
 */
export class EventLoopDelay {
  private histogram: IntervalHistogram | undefined;
  private since = 0;
  private stopped = false;

  /** Max delay (ms) since the previous read; reads within a second of each other share one window. */
  read(): number {
    if (this.stopped) return 0;
    if (this.histogram === undefined) {
      this.histogram = monitorEventLoopDelay({ resolution: 20 });
      this.histogram.enable();
      this.since = Date.now();
      return 0;
    }
    const max = this.histogram.count === 0 ? 0 : this.histogram.max / 1e6;
    // Liveness and readiness probes share the histogram: it restarts once per second at most.
    const now = Date.now();
    if (now - this.since >= 1000) {
      this.histogram.reset();
      this.since = now;
    }
    return max;
  }

  stop(): void {
    this.stopped = true;
    this.histogram?.disable();
    this.histogram = undefined;
  }
}
