import type { Logger } from '@beetle/core';
import type { ScriptedRedis } from './client.js';
import type { Call } from './connection.js';
import { RedisUnavailableError } from './errors.js';

/** How long a `ROLE` count of connected replicas is relied on (ms). */
const ROLE_TTL_MS = 1000;

/** At most one warning per this many ms about fewer replicas connected than asked for. */
const DEGRADED_LOG_INTERVAL_MS = 60_000;

/** The replicas connected to the server right now per `ROLE`, or `undefined` if it is not a master. */
async function connectedReplicas(client: ScriptedRedis): Promise<number | undefined> {
  const role = await client.call('ROLE');
  if (!Array.isArray(role) || role[0] !== 'master') return undefined;
  return Array.isArray(role[2]) ? role[2].length : 0;
}

/**
 * Calls whose effect the caller acts on, made durable (see `RedisConnection.runDurable`): each is sent with a
 * `WAIT` right behind it, in the same write, and answers once `replicas` replicas have every write of the
 * connection so far (this call's included).
 *
 * When fewer replicas than that are connected (per `ROLE`, asked at most once a second), it waits for the
 * connected ones only, and for none when there is none (a lone Redis; a promoted replica before the old
 * master is back as its replica): a replica that is not connected is not kept up to date either way, and a
 * `WAIT` for it would block the shared connection for the whole timeout on every call. A connected replica
 * that did not confirm in time rejects with a retriable `RedisUnavailableError`: the caller resends the call
 * (answered from its reply key, or idempotent) and waits again.
 */
export class ReplicaWait {
  private known: { client: ScriptedRedis; connected: number; at: number } | undefined;
  private degradedLoggedAt = Number.NEGATIVE_INFINITY;

  constructor(
    readonly replicas: number,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
    private readonly describeServer: () => string,
  ) {}

  async run<T, A, B>(client: ScriptedRedis, call: Call<T, A, B>, a: A, b: B): Promise<T> {
    let known = this.known;
    if (known?.client !== client || Date.now() - known.at >= ROLE_TTL_MS) {
      known = { client, connected: await this.role(client), at: Date.now() };
      this.known = known;
    }
    const wanted = Math.min(this.replicas, known.connected);
    if (wanted < this.replicas) this.degraded(known.connected);
    if (wanted === 0) return call(client, a, b);
    const reply = call(client, a, b);
    const acked = client.wait(wanted, this.timeoutMs);
    let result: T;
    try {
      result = await reply;
    } catch (error) {
      acked.catch(() => undefined); // the call's failure is the one that counts
      throw error;
    }
    const confirmed = await acked;
    if (confirmed >= wanted) return result;
    // A replica may have gone meanwhile: count again before the call is retried.
    const connected = await this.role(client);
    this.known = { client, connected, at: Date.now() };
    if (confirmed >= Math.min(this.replicas, connected)) return result;
    throw new RedisUnavailableError(
      `only ${confirmed} of ${connected} connected Redis replicas confirmed the writes within ${this.timeoutMs} ms`,
    );
  }

  private async role(client: ScriptedRedis): Promise<number> {
    const connected = await connectedReplicas(client);
    if (connected === undefined) throw new RedisUnavailableError('the Redis server is no longer a master');
    return connected;
  }

  private degraded(connected: number): void {
    const now = Date.now();
    if (now - this.degradedLoggedAt < DEGRADED_LOG_INTERVAL_MS) return;
    this.degradedLoggedAt = now;
    this.logger.warn(
      { server: this.describeServer(), connected, waitReplicas: this.replicas },
      'Redis dedup store: fewer replicas connected than waitReplicas; waiting for those there are',
    );
  }
}
