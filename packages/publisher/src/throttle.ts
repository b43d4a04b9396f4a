import type { Logger, Topology } from '@beetle/core';
import { sleep, systemClock, type Clock } from '@beetle/core/kit';
import type { BrokerTarget } from './broker-target.js';

/** How long each publish waits while throttled. */
const THROTTLE_DELAY_MS = 1000;

/**
 * Ruby's `throttle`: while the summed length over all brokers of any of the limited queues exceeds its
 * limit, every publish waits a second before sending. Lengths are measured in the background.
 */
export class Throttle {
  private limits = new Map<string, number>();
  private active = false;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;

  constructor(
    private readonly targets: readonly BrokerTarget[],
    private readonly topology: Topology,
    private readonly refreshIntervalSeconds: number,
    private readonly logger: Logger,
    private readonly clock: Clock = systemClock,
  ) {}

  /** Whether publishing is currently throttled. */
  get throttled(): boolean {
    return this.active;
  }

  /** New limits (queue → maximum length); an empty object stops throttling. */
  set(limits: Readonly<Record<string, number>>): void {
    this.limits = new Map(Object.entries(limits));
    this.stop();
    if (this.limits.size === 0) {
      this.active = false;
      return;
    }
    this.timer = setInterval(() => void this.refresh(), this.refreshIntervalSeconds * 1000);
    this.timer.unref();
    void this.refresh();
  }

  /** Stops the background measurement. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The wait of a publish while throttled (never past its deadline). */
  wait(deadline: number): Promise<void> {
    return sleep(Math.min(THROTTLE_DELAY_MS, Math.max(0, deadline - this.clock.nowMs())), true);
  }

  /** Measures queue lengths now (also what the background timer runs); concurrent calls share one run. */
  refresh(): Promise<void> {
    this.refreshing ??= this.measure().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async measure(): Promise<void> {
    let throttled = false;
    for (const [queue, limit] of this.limits) {
      const amqpName = this.topology.hasQueue(queue) ? this.topology.queue(queue).amqpName : queue;
      const lengths = await Promise.all(
        this.targets.map(async (target) => {
          try {
            const declarer = await target.declarer();
            return await declarer.queueLength(amqpName);
          } catch (error) {
            this.logger.warn(
              { server: target.server, queue, err: error },
              `could not measure the length of ${queue} on ${target.server}`,
            );
            return 0;
          }
        }),
      );
      const total = lengths.reduce((a, b) => a + b, 0);
      if (total > limit) throttled = true;
    }
    if (throttled !== this.active) {
      this.logger.info({ throttled }, throttled ? 'publisher throttled' : 'publisher no longer throttled');
    }
    this.active = throttled && this.limits.size > 0;
  }
}
