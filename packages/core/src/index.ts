export * from './errors.js';
export * from './outcomes.js';
export * from './retry-policy.js';
export * from './envelope.js';
export * from './topology.js';
export * from './logger.js';
export { TypedEmitter } from './events.js';
export {
  brokerAddress,
  configFromEnv,
  configOptions,
  createConfig,
  DEFAULT_AMQP_PORT,
  defaultConfig,
  ignoredFileKeys,
  loadConfigFile,
  parseConfigFile,
  parseServerAddress,
  parseServerList,
  type BeetleConfig,
  type BeetleConfigInput,
  type BrokerAddress,
  type BrokerTlsOptions,
  type ConfigOptionInfo,
  type ConfigReadOptions,
  type IgnoredConfigKey,
  type OptionName,
  type OptionType,
  type OptionUnit,
  type ServerConnectionOptions,
  type ServerHeartbeat,
} from './config/index.js';
export * from './dedup/keys.js';
export type * from './dedup/store.js';
export { acksOf } from './dedup/store.js';
export { decideFailure, retryAt } from './dedup/decide.js';
export { MemoryDedupStore, type MemoryDedupStoreOptions } from './dedup/memory-store.js';
export { coalesceWrites } from './coalesce-writes.js';
export {
  HEADER_TABLE_MAX_BYTES,
  SHORTSTR_MAX_BYTES,
  validatePublish,
  type PublishTarget,
} from './publish-validation.js';
