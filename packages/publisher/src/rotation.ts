import type { Logger } from '@beetle/core';
import { systemClock, type Clock } from '@beetle/core/kit';
import type { PublisherEmitter } from './types.js';

/**
 * Which brokers a publish goes to (Ruby's server rotation): round robin over the live brokers; a broker that
 * failed twice in a row is dead until `deadServerRetryInterval` has passed (with none alive, the one dead
 * longest comes back at once), and on probation after that until its first success.
 */
export class Rotation {
  private live: string[];
  /** Dead brokers and when they died (ms). */
  private readonly dead = new Map<string, number>();
  /** Brokers back in the rotation after having been dead, until their first success, and when they died. */
  private readonly probation = new Map<string, number>();
  private cursor: number;

  constructor(
    servers: readonly string[],
    private readonly retryIntervalSeconds: number,
    private readonly events: PublisherEmitter,
    private readonly logger: Logger,
    private readonly clock: Clock = systemClock,
    random: () => number = Math.random,
  ) {
    this.live = [...servers];
    this.cursor = Math.floor(random() * this.live.length) - 1;
  }

  get liveCount(): number {
    return this.live.length;
  }

  get hasDead(): boolean {
    return this.dead.size > 0;
  }

  liveServers(): string[] {
    return [...this.live];
  }

  deadServers(): string[] {
    return [...this.dead.keys()];
  }

  /** The next live broker not in `exclude`, round robin. */
  next(exclude?: ReadonlySet<string>): string | undefined {
    const n = this.live.length;
    for (let i = 0; i < n; i++) {
      this.cursor = (this.cursor + 1) % n;
      const server = this.live[this.cursor];
      if (server !== undefined && !exclude?.has(server)) return server;
    }
    return undefined;
  }

  markDead(server: string, error: unknown): void {
    if (this.dead.has(server)) return;
    this.dead.set(server, this.clock.nowMs());
    this.probation.delete(server);
    this.live = this.live.filter((s) => s !== server);
    this.logger.warn({ server, err: error }, `broker ${server} marked dead`);
    this.events.emit('brokerDead', { server, error });
  }

  /** A publish to `server` was confirmed: a broker on probation has recovered. */
  succeeded(server: string): void {
    if (this.probation.size === 0) return;
    const diedAt = this.probation.get(server);
    if (diedAt === undefined) return;
    this.probation.delete(server);
    const deadForMs = this.clock.nowMs() - diedAt;
    this.logger.info({ server, deadForMs }, `broker ${server} recovered`);
    this.events.emit('brokerRecovered', { server, deadForMs });
  }

  /** Ruby `recycle_dead_servers`: dead longer than the retry interval → back; none alive → the oldest. */
  recycleDeadServers(): void {
    if (this.dead.size === 0) return;
    const now = this.clock.nowMs();
    const cutoff = now - this.retryIntervalSeconds * 1000;
    const back: string[] = [];
    for (const [server, diedAt] of this.dead) if (diedAt <= cutoff) back.push(server);
    if (back.length === 0 && this.live.length === 0) {
      let oldest: string | undefined;
      let oldestAt = Infinity;
      for (const [server, diedAt] of this.dead) {
        if (diedAt < oldestAt) {
          oldest = server;
          oldestAt = diedAt;
        }
      }
      if (oldest !== undefined) back.push(oldest);
    }
    for (const server of back) {
      this.probation.set(server, this.dead.get(server) ?? now);
      this.dead.delete(server);
      this.live.push(server);
      this.logger.info({ server }, `retrying dead broker ${server}`);
    }
  }
}
