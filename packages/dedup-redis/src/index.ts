// The dedup store.
export { RedisDedupStore, type MessageExpiry } from './redis-dedup-store.js';
export type { RedisDedupStoreConfig, RedisDedupStoreOptions } from './options.js';

// Errors (each a BeetleError with a `reason`).
export {
  MasterChangedError,
  RedisReplyError,
  RedisUnavailableError,
  ScanInterruptedError,
} from './errors.js';

// Redis Sentinel.
export {
  askSentinels,
  isSentinelUrl,
  parseSentinelUrl,
  sentinelTarget,
  type SentinelSettings,
  type SentinelTarget,
} from './sentinel.js';

// The redis master file.
export {
  isRedisAddress,
  MasterWatcher,
  parseRedisAddress,
  parseRedisMasterFile,
  resolveRedisMaster,
  type RedisMasterSettings,
} from './master.js';

// Maintenance: what `beetle gc`, `dump-expiries`, `delete-keys`, `copy-keys` and `status` run on.
export {
  messageKeysOf,
  RedisMaintenanceClient,
  withRestarts,
  type CopyCount,
  type ExpiryEntry,
  type MaintenanceClientOptions,
  type MaintenanceConnect,
  type RedisArg,
  type RedisMaintenanceConfig,
  type RedisReply,
  type RestartOptions,
} from './maintenance.js';
export { escapeGlob, type ScanLoopOptions } from './scan.js';
