export {
  RedisDedupStore,
  type MessageExpiry,
  type RedisDedupStoreConfig,
  type RedisDedupStoreOptions,
} from './redis-dedup-store.js';
export { isRedisAddress, parseRedisAddress, parseRedisMasterFile } from './master-file.js';
