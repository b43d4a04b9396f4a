import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { ConfigurationError } from '../errors.js';
import { configOptions, type BeetleConfigInput, type ConfigReadOptions, type OptionName } from './options.js';
import { unknownOptionError } from './create.js';
import { describeValue, findOption, isPlainObject, normalizeOption } from './validate.js';

const GO_ONLY = 'used by the Go beetle daemons only';

/** Keys a Ruby or Go Beetle file may contain that mean nothing to this library, with the reason. */
export const ignoredFileKeys: ReadonlyMap<string, string> = new Map(
  Object.entries({
    logger: 'Ruby logger object; give the client a logger instead',
    log_file: 'target of the Ruby default logger; give the client a logger instead',
    redis_logger: 'Ruby redis-rb logger',
    tmpdir: 'unused by Ruby Beetle',
    api_port: 'ignored since Ruby Beetle 4.0: the management API port is "1" + the AMQP port',
    redis_failover_client_heartbeat_interval: 'legacy Ruby failover client setting',
    redis_failover_client_dead_interval: 'legacy Ruby failover client setting',
    redis_configuration_server: GO_ONLY,
    redis_configuration_server_port: GO_ONLY,
    redis_configuration_client_heartbeat: GO_ONLY,
    redis_gc_threshold: GO_ONLY,
    redis_gc_databases: GO_ONLY,
    redis_failover_confidence_level: GO_ONLY,
    dial_timeout: GO_ONLY,
    mail_to: GO_ONLY,
    mail_from: GO_ONLY,
    mail_relay: GO_ONLY,
  }),
);

/** Ruby's `publisher_heartbeat` alias of `heartbeat`. */
const fileAliases = new Map<string, OptionName>([['publisher_heartbeat', 'heartbeat']]);

const fileKeyCandidates = [
  ...configOptions.flatMap((o) => [o.rubyName, o.name]),
  ...ignoredFileKeys.keys(),
  ...fileAliases.keys(),
];

function parseText(text: string, format: 'yaml' | 'json', source: string): unknown {
  try {
    // YAML 1.1 like Ruby's Psych (yes/no booleans, merge keys).
    return format === 'json' ? (JSON.parse(text) as unknown) : parseYaml(text, { version: '1.1' });
  } catch (error) {
    throw new ConfigurationError(
      `cannot parse ${source} as ${format.toUpperCase()}: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

/**
 * Parses a Beetle configuration file: Ruby's snake_case keys (`redis_server`, `server_connection_options`
 * with `{"host:port": {user, pass, vhost, ssl}}`, `heartbeat: server`, ...) or camelCase ones, so an existing
 * deployment's file works unchanged. Keys Ruby or the Go daemons know but that mean nothing here (`logger`,
 * `api_port`, ...) go to `onIgnoredKey`; unknown keys, wrong values and ERB templates raise a
 * `ConfigurationError` naming the key and `source`.
 */
export function parseConfigFile(
  text: string,
  format: 'yaml' | 'json',
  source = `${format.toUpperCase()} configuration`,
  options: ConfigReadOptions = {},
): BeetleConfigInput {
  if (text.includes('<%')) {
    throw new ConfigurationError(
      `${source} contains an ERB template (<% ... %>), which is not supported: render the file first`,
    );
  }
  const document = parseText(text, format, source);
  if (!isPlainObject(document)) {
    throw new ConfigurationError(
      `${source} must contain a mapping at the top level, got ${describeValue(document)}`,
    );
  }

  const input: Record<string, unknown> = {};
  const seen = new Map<OptionName, string>();
  for (const [key, value] of Object.entries(document)) {
    const ignoredReason = ignoredFileKeys.get(key);
    if (ignoredReason !== undefined) {
      options.onIgnoredKey?.({ key, source, reason: ignoredReason });
      continue;
    }
    const option = findOption(fileAliases.get(key) ?? key);
    if (option === undefined) throw unknownOptionError(key, ` in ${source}`, fileKeyCandidates);
    const previous = seen.get(option.name);
    if (previous !== undefined) {
      const message = `${source} sets option \`${option.name}\` twice: as \`${previous}\` and \`${key}\``;
      throw new ConfigurationError(message, { key: option.name });
    }
    seen.set(option.name, key);
    const normalized = normalizeOption(option, value, {
      key: option.name,
      label: `option \`${key}\` in ${source}`,
    });
    if (normalized !== undefined) input[option.name] = normalized;
  }
  return input;
}

/** Reads and parses a configuration file: JSON if the name ends in `.json`, YAML otherwise (Ruby's rule). */
export async function loadConfigFile(
  path: string,
  options: ConfigReadOptions = {},
): Promise<BeetleConfigInput> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new ConfigurationError(`cannot read configuration file ${path}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  return parseConfigFile(text, path.endsWith('.json') ? 'json' : 'yaml', path, options);
}
