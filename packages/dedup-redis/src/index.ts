export {
  RedisDedupStore,
  type MessageExpiry,
  type RedisDedupStoreConfig,
  type RedisDedupStoreOptions,
} from './redis-dedup-store.js';
export { isRetriableRedisError, RedisUnavailableError } from './connection.js';
export {
  isRedisAddress,
  parseRedisAddress,
  parseRedisMasterFile,
  REDIS_ADDRESS_PATTERN,
} from './master-file.js';
export { ACKNOWLEDGED, ACQUIRE, CLAIM, FAIL, type ScriptDefinition } from './scripts.js';
