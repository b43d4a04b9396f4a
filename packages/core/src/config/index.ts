export {
  configOptions,
  defaultConfig,
  type BeetleConfig,
  type BeetleConfigInput,
  type ConfigOptionInfo,
  type ConfigReadOptions,
  type IgnoredConfigKey,
  type OptionName,
  type OptionType,
  type OptionUnit,
  type ServerConnectionOptions,
  type ServerHeartbeat,
} from './options.js';
export { createConfig } from './create.js';
export { configFromEnv } from './env.js';
export { ignoredFileKeys, loadConfigFile, parseConfigFile } from './file.js';
export {
  brokerAddress,
  DEFAULT_AMQP_PORT,
  parseServerAddress,
  parseServerList,
  type BrokerAddress,
  type BrokerTlsOptions,
} from './servers.js';
