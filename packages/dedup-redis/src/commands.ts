import type { ClaimParams, ClaimResult, FailOutcome, FailResult, MessageRef } from '@beetle/core';
import { allKeysOf, Batcher, msgId, rubyToI, type Schedule } from '@beetle/core/kit';
import type { ScriptedRedis } from './client.js';
import type { RedisConnection } from './connection.js';
import { RedisReplyError } from './errors.js';
import type { OnceCall, ReplyKeys } from './replies.js';
import type { ScriptName } from './scripts.js';

/*
 * The commands of the store's steps and the reading of their replies: what `RedisDedupStore` sends for each
 * step, batched (claims, completions, cleanups of one tick) or one per call (the scripts through `ReplyKeys`).
 */

/** Most messages per batched command: bounds a script's run time on the server and the size of a command. */
export const MAX_BATCH = 100;

export const unexpected = (script: string, reply: unknown): RedisReplyError =>
  new RedisReplyError(`unexpected reply from the ${script} script: ${JSON.stringify(reply)}`);

/** A value of Ruby's MGET: a string read with `to_i`, or nil. */
const optionalInt = (value: unknown): number | undefined => {
  if (typeof value === 'string') return rubyToI(value);
  if (typeof value === 'number') return value;
  return undefined;
};

/**
 * The timeout argument of a claim or acquire: absolute unix seconds, or `+<seconds>` for Redis' now + seconds
 * when the caller asks for the store's clock.
 */
export const timeoutArg = (timeoutAt: number, timeout: number | undefined): string =>
  timeout === undefined ? String(timeoutAt) : `+${Math.ceil(timeout)}`;

export interface ClaimItem {
  readonly ref: MessageRef;
  readonly params: ClaimParams;
}

/** The claim script call of a batch (built once: a resend sends the same, marked as a resend). */
export const claimCall = (replies: ReplyKeys, key: string, items: readonly ClaimItem[]): OnceCall => {
  const before: string[] = [String(items.length)];
  for (const { ref } of items) before.push(msgId(ref));
  const own: string[] = [];
  for (const { params } of items) {
    own.push(String(params.expiresAt), timeoutArg(params.timeoutAt, params.timeout));
  }
  return replies.call(before, key, own);
};

export const sendClaim = (redis: ScriptedRedis, call: OnceCall): Promise<unknown> =>
  redis.beetleClaim(...call.next());

/** A script call with its message id first, then its reply header and arguments. */
export const sendScript = (redis: ScriptedRedis, script: ScriptName, call: OnceCall): Promise<unknown> =>
  redis[script](...call.next());

/** The result of one message of a claim batch (see the CLAIM script). */
export const claimResult = (entry: unknown): ClaimResult | Error => {
  if (!Array.isArray(entry)) return unexpected('claim', entry);
  if (entry[0] === 1 && typeof entry[1] === 'number') return { first: true, attempts: entry[1] };
  if (entry[0] === -1) return new RedisReplyError(`claim failed: ${String(entry[1])}`);
  if (entry[0] !== 0 || (entry.length !== 6 && entry.length !== 7)) return unexpected('claim', entry);
  const [, status, delay, timeout, attempts, exceptions, now] = entry as unknown[];
  const state = {
    status: typeof status === 'string' ? status : undefined,
    delay: optionalInt(delay),
    timeout: optionalInt(timeout),
    attempts: optionalInt(attempts) ?? 0,
    exceptions: optionalInt(exceptions) ?? 0,
  };
  if (entry.length === 6) return { first: false, state };
  if (typeof now !== 'number') return unexpected('claim', entry);
  return { first: false, state, now };
};

const FAIL_OUTCOMES: ReadonlySet<string> = new Set<FailOutcome>([
  'AttemptsLimitReached',
  'ExceptionsLimitReached',
  'ExceptionNotAccepted',
  'HandlerCrash',
]);

/** The reply of the FAIL script. */
export function failResult(reply: unknown): FailResult {
  if (!Array.isArray(reply) || reply.length !== 4) throw unexpected('fail', reply);
  const [outcome, attempts, exceptions, delayUntil] = reply as unknown[];
  if (
    typeof outcome !== 'string' ||
    !FAIL_OUTCOMES.has(outcome) ||
    typeof attempts !== 'number' ||
    typeof exceptions !== 'number' ||
    typeof delayUntil !== 'string'
  ) {
    throw unexpected('fail', reply);
  }
  return {
    outcome: outcome as FailOutcome,
    attempts,
    exceptions,
    delayUntil: outcome === 'HandlerCrash' ? Number(delayUntil) : undefined,
  };
}

export interface CompleteItem {
  readonly ref: MessageRef;
  readonly expiresAt: number | undefined;
}

/** Ruby's `completed!` (MSET status timeout) of each message, with its `expires` when known (CompleteParams). */
export const completeBatch = (redis: ScriptedRedis, items: readonly CompleteItem[]): Promise<'OK'> => {
  const args: string[] = [];
  for (const { ref, expiresAt } of items) {
    const id = msgId(ref);
    args.push(`${id}:status`, 'completed', `${id}:timeout`, '0');
    if (expiresAt !== undefined) args.push(`${id}:expires`, String(expiresAt));
  }
  return redis.mset(args);
};

/** All 8 keys of each message deleted with one plain DEL (Ruby's cleanup, without a script around it). */
export const deleteAllBatch = (redis: ScriptedRedis, refs: readonly MessageRef[]): Promise<number> => {
  const keys: string[] = [];
  for (const ref of refs) keys.push(...allKeysOf(ref));
  return redis.del(keys);
};

/**
 * The forget script over each message (the cleanup keeping `status=completed`, see FORGET): the number of
 * message ids, the ids, then the status-key expiry interval and the completed-status TTL.
 */
export const forgetBatch =
  (interval: string, completedTtl: string) =>
  (redis: ScriptedRedis, refs: readonly MessageRef[]): Promise<unknown> => {
    const args: string[] = [String(refs.length)];
    for (const ref of refs) args.push(msgId(ref));
    args.push(interval, completedTtl);
    return redis.beetleForget(...args);
  };

/**
 * Batches of a plain command whose reply answers every message in it (`durable`: see `runDurable`; `gate`:
 * a closed batch waits for it, see `Batcher`).
 */
export const commandBatcher = <I>(
  connection: RedisConnection,
  operation: string,
  call: (redis: ScriptedRedis, items: readonly I[]) => Promise<unknown>,
  schedule: Schedule,
  { durable = false, gate }: { readonly durable?: boolean; readonly gate?: Schedule } = {},
): Batcher<I, undefined> =>
  new Batcher(
    async (items) => {
      if (durable) await connection.runDurable(operation, call, items);
      else await connection.run(operation, call, items);
      return new Array<undefined>(items.length).fill(undefined);
    },
    MAX_BATCH,
    schedule,
    gate,
  );
