import type { ScriptedRedis } from './client.js';
import type { Call } from './connection.js';
import { RedisUnavailableError } from './errors.js';

/** A call made durable: sent with a `WAIT` right behind it (see `RedisConnection.runDurable`). */
export interface DurableCall<T, A, B> {
  readonly call: Call<T, A, B>;
  readonly a: A;
  readonly b: B;
  readonly replicas: number;
  readonly timeoutMs: number;
  /** Told when fewer replicas than asked for are connected (and all of them confirmed). */
  readonly onDegraded: (connected: number) => void;
}

/** The replicas connected to the server right now per `ROLE`, or `undefined` if it is not a master. */
async function connectedReplicas(client: ScriptedRedis): Promise<number | undefined> {
  const role = (await client.call('ROLE')) as unknown;
  if (!Array.isArray(role) || role[0] !== 'master') return undefined;
  return Array.isArray(role[2]) ? role[2].length : 0;
}

/**
 * Sends the call and a `WAIT` in the same write; resolves with the call's reply once `replicas` replicas have
 * every write of the connection so far (this call's included), or, when fewer replicas than that are
 * connected (`ROLE`), once all connected ones have it: a replica that is not there cannot be promoted with
 * less, and the store goes on (e.g. right after a failover, before the old master is back as a replica).
 * A connected replica that did not confirm in time rejects with a retriable `RedisUnavailableError`: the
 * caller resends the call (answered from its reply key, or idempotent) and waits again.
 */
export async function durably<T, A, B>(client: ScriptedRedis, step: DurableCall<T, A, B>): Promise<T> {
  const reply = step.call(client, step.a, step.b);
  const acked = client.wait(step.replicas, step.timeoutMs);
  let result: T;
  try {
    result = await reply;
  } catch (error) {
    acked.catch(() => undefined); // the call's failure is the one that counts
    throw error;
  }
  const confirmed = await acked;
  if (confirmed >= step.replicas) return result;
  const connected = await connectedReplicas(client);
  if (connected === undefined) throw new RedisUnavailableError('the Redis server is no longer a master');
  if (confirmed >= connected) {
    step.onDegraded(connected);
    return result;
  }
  throw new RedisUnavailableError(
    `only ${confirmed} of ${connected} connected Redis replicas confirmed the writes within ${step.timeoutMs} ms`,
  );
}

