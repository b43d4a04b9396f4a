/**
 * `@beetle/core/kit`: the parts Beetle's own packages are built from, for adapters, third-party dedup stores
 * and custom pipelines. Stable enough to build on, but not what an application composes with (that is
 * `@beetle/core`): names here may change in a minor release, with a changeset saying so.
 */

// Timing and concurrency helpers.
export { amqplibAckFlush, type AckFlush } from './ack-flush.js';
export { backoff, type BackoffOptions } from './backoff.js';
export { Batcher, type Schedule } from './batch.js';
export { systemClock, type Clock, type TimerHandle } from './clock.js';
export { coalesceWrites } from './coalesce-writes.js';
export { DeadlineSweeper, type DeadlineSweeperOptions } from './deadline-sweeper.js';
export { TypedEmitter } from './events.js';
export { Lazy, Memo } from './lazy.js';
export { Slots } from './slots.js';
export { errorMessage, sleep, toError, withTimeout } from './timing.js';

// The wire: Beetle's message envelope as Ruby Beetle writes and reads it.
export {
  DEFAULT_CONTENT_TYPE,
  FLAG_REDUNDANT,
  FORMAT_VERSION,
  decodeMessage,
  encodeBody,
  encodeMessage,
  isExpired,
  nowSeconds,
  originalRoutingKey,
  ownHeaders,
  type EncodeOptions,
  type EncodedMessage,
  type EnvelopeProperties,
} from '../envelope.js';
export {
  HEADER_TABLE_MAX_BYTES,
  SHORTSTR_MAX_BYTES,
  validatePublish,
  type PublishTarget,
} from '../publish-validation.js';

// Handler retry settings as the state machine applies them (Ruby's `Message#setup`).
export {
  DEFAULT_ATTEMPTS,
  DEFAULT_DELAY,
  DEFAULT_EXCEPTIONS,
  DEFAULT_HANDLER_TIMEOUT,
  DEFAULT_TTL,
  TIMEOUT_GRACE_PERIOD,
  isSimple,
  nextDelay,
  retryPolicy,
  timeoutAt,
} from '../retry-policy.js';

// For dedup store implementers: Ruby's key schema and the shared decisions.
export {
  KEY_SUFFIXES,
  MSG_ID_PATTERN,
  RUBY_MSG_ID_PATTERN,
  allKeysOf,
  keyOf,
  msgId,
  parseKey,
  rubyToI,
  type KeySuffix,
} from '../dedup/keys.js';
export { acksOf } from '../dedup/store.js';
export { decideFailure, retryAt } from '../dedup/decide.js';

// Configuration internals (the CLI and the broker layer use them).
export {
  brokerAddress,
  ignoredFileKeys,
  parseServerAddress,
  parseServerList,
  type IgnoredConfigKey,
} from '../config/index.js';
