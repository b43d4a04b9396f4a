import { ConfigurationError } from '../errors.js';
import {
  configOptions,
  optionInfo,
  type BeetleConfig,
  type BeetleConfigInput,
  type ConfigOptionInfo,
} from './options.js';
import { closest, describeValue, findOption, isPlainObject, normalizeOption } from './validate.js';

const optionNames = configOptions.map((o) => o.name);

export function unknownOptionError(
  key: string,
  where: string,
  candidates: Iterable<string>,
): ConfigurationError {
  const suggestion = closest(key, candidates);
  const hint = suggestion === undefined ? '' : `; did you mean \`${suggestion}\`?`;
  return new ConfigurationError(`unknown option \`${key}\`${where}${hint}`, { key });
}

/**
 * Merges `inputs` left to right over the defaults (`undefined` inputs and values are skipped; object options
 * such as `serverConnectionOptions` are replaced, not deep-merged) and validates every key. Returns a fresh,
 * frozen object that shares no arrays or objects with the inputs or the defaults.
 */
export function createConfig(...inputs: (BeetleConfigInput | undefined)[]): BeetleConfig {
  const merged = new Map<string, unknown>();
  inputs.forEach((input, index) => {
    if (input === undefined) return;
    if (!isPlainObject(input)) {
      throw new ConfigurationError(
        `configuration input #${index + 1} must be an object, got ${describeValue(input)}`,
      );
    }
    for (const [key, value] of Object.entries(input)) {
      const option = optionInfo.get(key);
      if (option === undefined) {
        // A Ruby name is not a typo: point straight at the camelCase name.
        const known = findOption(key);
        throw unknownOptionError(key, '', known === undefined ? optionNames : [known.name]);
      }
      if (value === undefined) continue;
      merged.set(key, normalizeOption(option, value, { key, label: `option \`${key}\`` }));
    }
  });

  const config: Record<string, unknown> = {};
  const derived: ConfigOptionInfo[] = [];
  for (const option of configOptions) {
    if (option.defaultFrom !== undefined && !merged.has(option.name)) {
      derived.push(option);
      continue;
    }
    // Defaults are frozen; normalizing copies them.
    config[option.name] = merged.has(option.name)
      ? merged.get(option.name)
      : normalizeOption(option, option.default, { key: option.name, label: `default of \`${option.name}\`` });
  }
  for (const option of derived) config[option.name] = config[option.defaultFrom!];
  const result = config as unknown as BeetleConfig;

  if (result.servers.length === 0) {
    throw new ConfigurationError('option `servers` must name at least one broker', { key: 'servers' });
  }
  // Ruby: additional_subscription_servers - servers
  config.additionalSubscriptionServers = result.additionalSubscriptionServers.filter(
    (s) => !result.servers.includes(s),
  );
  if (result.subscriberReconnectMaxDelay < result.subscriberReconnectDelay) {
    throw new ConfigurationError(
      `option \`subscriberReconnectMaxDelay\` (${result.subscriberReconnectMaxDelay}) must not be less than ` +
        `\`subscriberReconnectDelay\` (${result.subscriberReconnectDelay})`,
      { key: 'subscriberReconnectMaxDelay' },
    );
  }
  return Object.freeze(result);
}
