import { BeetleError, type BeetleErrorOptions } from '@beetle/core';

/** Redis cannot be used right now, for a reason that may go away (no master, not connected yet, stalled). */
export class RedisUnavailableError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('redis-unavailable', message, options);
  }
}

/** The master file names another master now: work under way on the old one starts over on the new one. */
export class MasterChangedError extends RedisUnavailableError {}

/**
 * Redis answered with an error (a script error, WRONGTYPE, a wrong password) or with something the caller did
 * not expect: a bug or a foreign key, not retried.
 */
export class RedisReplyError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('redis-reply', message, options);
  }
}

/** A SCAN (or another run over many keys) stopped by a signal before it completed. */
export class ScanInterruptedError extends BeetleError {
  constructor(message = 'stopped by a signal before the scan completed') {
    super('interrupted', message);
  }
}

/** ioredis' error replies (`-ERR …`), from the untyped redis-errors package: recognised by name. */
export const isErrorReply = (error: unknown): boolean =>
  error instanceof Error && error.name === 'ReplyError';

/** An error reply of ioredis as a `RedisReplyError` with its message; anything else unchanged. */
export const fromErrorReply = (error: unknown): unknown =>
  isErrorReply(error) ? new RedisReplyError((error as Error).message, { cause: error }) : error;

const RETRIABLE_REPLIES = /^(READONLY|LOADING|MASTERDOWN|BUSY|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)\b/;
const RETRIABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);
const RETRIABLE_MESSAGES =
  /Connection is closed|Stream isn't writeable|Command timed out|Socket closed unexpectedly/;

/**
 * Whether a failed call may succeed when retried: connection-level failures and the replies of a server that
 * is not (yet) a usable master. Replies such as script errors or WRONGTYPE are bugs and are not retried.
 */
export function isRetriableRedisError(error: unknown): boolean {
  if (error instanceof RedisUnavailableError) return true;
  if (!(error instanceof Error)) return false;
  if (error.name === 'ReplyError') return RETRIABLE_REPLIES.test(error.message);
  if (error.name === 'MaxRetriesPerRequestError') return true;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && RETRIABLE_CODES.has(code)) return true;
  return RETRIABLE_MESSAGES.test(error.message);
}
