import { parseArgs } from 'node:util';
import {
  BeetleError,
  configFromEnv,
  configOptions,
  ConfigurationError,
  createConfig,
  loadConfigFile,
  type BeetleConfig,
  type BeetleConfigInput,
  type BeetleErrorOptions,
  type ConfigOptionInfo,
} from '@beetle/core';

/** A wrong command line: exit status 2. */
export class UsageError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('usage', message, options);
  }
}

export interface FlagSpec {
  readonly type: 'string' | 'boolean';
  readonly multiple?: boolean;
  readonly short?: string;
  /** Placeholder shown in help, e.g. `<seconds>`. */
  readonly value?: string;
  readonly description: string;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

/** Flags every command accepts. */
export const generalFlags: FlagSpecs = {
  help: { type: 'boolean', short: 'h', description: 'show this help' },
  verbose: {
    type: 'boolean',
    short: 'v',
    description: 'log library messages to stderr and print stack traces of errors',
  },
};

/**
 * Configuration flags, accepted by every command; they win over the environment (`BEETLE_*`), which wins over
 * the configuration file. Each maps to one option of the configuration table.
 */
export const configFlags: FlagSpecs = {
  'config-file': {
    type: 'string',
    value: '<file>',
    description: 'Beetle YAML or JSON configuration file (env BEETLE_CONFIG_FILE)',
  },
  servers: { type: 'string', value: '<h:p,...>', description: 'brokers (option servers)' },
  'additional-subscription-servers': {
    type: 'string',
    value: '<h:p,...>',
    description: 'brokers only subscribed to',
  },
  vhost: { type: 'string', value: '<vhost>', description: 'AMQP virtual host' },
  user: { type: 'string', value: '<user>', description: 'AMQP user' },
  password: { type: 'string', value: '<password>', description: 'AMQP password' },
  'redis-server': {
    type: 'string',
    value: '<h:p|file>',
    description: 'dedup store `host:port`, or the path of the redis master file',
  },
  'redis-db': { type: 'string', value: '<n>', description: 'database of the dedup store (default 4)' },
  'redis-password': { type: 'string', value: '<password>', description: 'Redis AUTH password' },
  'system-name': {
    type: 'string',
    value: '<name>',
    description: 'which line of the redis master file to use (default system)',
  },
  set: {
    type: 'string',
    multiple: true,
    value: '<key=value>',
    description: 'any configuration option, by Ruby or camelCase name (repeatable)',
  },
};

/** Configuration flags that set one option directly. */
const flagOptions: Readonly<Record<string, string>> = {
  servers: 'servers',
  'additional-subscription-servers': 'additionalSubscriptionServers',
  vhost: 'vhost',
  user: 'user',
  password: 'password',
  'redis-server': 'redisServer',
  'redis-db': 'redisDb',
  'redis-password': 'redisPassword',
  'system-name': 'systemName',
};

export type FlagValues = Record<string, string | boolean | string[] | undefined>;

export interface ParsedArgs {
  readonly flags: FlagValues;
  readonly positionals: string[];
}

/** Parses `argv` against the given flags (strict: unknown flags are usage errors naming them). */
export function parseCommandLine(argv: readonly string[], specs: FlagSpecs, command: string): ParsedArgs {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = {
      type: spec.type,
      ...(spec.multiple === true ? { multiple: true } : {}),
      ...(spec.short === undefined ? {} : { short: spec.short }),
    };
  }
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      options,
      strict: true,
      allowPositionals: true,
    });
    return { flags: values as FlagValues, positionals };
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const message = (error as Error).message;
    const flag = /'(-[^' ]+)/.exec(message)?.[1];
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      throw new UsageError(`unknown flag ${flag ?? message} for \`beetle ${command}\` (see --help)`);
    }
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      const takesValue = flag !== undefined && /argument missing/.test(message);
      throw new UsageError(takesValue ? `flag ${flag} needs a value` : `invalid flag value: ${message}`);
    }
    throw new UsageError(message);
  }
}

export const stringFlag = (flags: FlagValues, name: string): string | undefined => {
  const value = flags[name];
  return typeof value === 'string' ? value : undefined;
};

export const listFlag = (flags: FlagValues, name: string): string[] => {
  const value = flags[name];
  return Array.isArray(value) ? value : typeof value === 'string' ? [value] : [];
};

/** A `true`/`false` flag value (also yes/no, 1/0): `undefined` when absent; usage error otherwise. */
export function booleanFlag(flags: FlagValues, name: string): boolean | undefined {
  const raw = stringFlag(flags, name);
  if (raw === undefined) return undefined;
  if (/^(?:true|yes|1)$/i.test(raw.trim())) return true;
  if (/^(?:false|no|0)$/i.test(raw.trim())) return false;
  throw new UsageError(`--${name} must be true or false, got ${JSON.stringify(raw)}`);
}

/** A number flag: `undefined` when absent; usage error naming the flag when not a number in range. */
export function numberFlag(
  flags: FlagValues,
  name: string,
  options: { integer?: boolean; min?: number } = {},
): number | undefined {
  const raw = stringFlag(flags, name);
  if (raw === undefined) return undefined;
  const value = Number(raw.trim());
  const min = options.min ?? 0;
  if (
    raw.trim() === '' ||
    !Number.isFinite(value) ||
    value < min ||
    (options.integer && !Number.isInteger(value))
  ) {
    const kind = options.integer ? 'an integer' : 'a number';
    throw new UsageError(`--${name} must be ${kind} >= ${min}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

const GO_DURATION = /^(?:\d+(?:\.\d+)?(?:h|m|s|ms))+$/;

/**
 * Seconds from `--name`: a number of seconds, or a Go duration (`90m`, `1h30m`, `45s`) as the Go command
 * takes. Negative values are allowed with a leading `-`.
 */
export function durationFlag(flags: FlagValues, name: string): number | undefined {
  const raw = stringFlag(flags, name)?.trim();
  if (raw === undefined) return undefined;
  const negative = raw.startsWith('-');
  const text = negative ? raw.slice(1) : raw;
  let seconds: number | undefined;
  if (/^\d+(?:\.\d+)?$/.test(text)) {
    seconds = Number(text);
  } else if (GO_DURATION.test(text)) {
    const units: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };
    seconds = 0;
    for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)) {
      seconds += Number(amount) * (units[unit ?? 's'] ?? 1);
    }
  }
  if (seconds === undefined) {
    throw new UsageError(
      `--${name} must be seconds or a duration like 90m or 1h30m, got ${JSON.stringify(raw)}`,
    );
  }
  return negative ? -seconds : seconds;
}

/** Parses a flag's text into the type of a configuration option (validation is createConfig's job). */
function parseOptionValue(option: ConfigOptionInfo, raw: string, label: string): unknown {
  const text = raw.trim();
  switch (option.type) {
    case 'string':
    case 'serverList':
      return raw;
    case 'boolean':
      if (/^(?:true|yes|1)$/i.test(text)) return true;
      if (/^(?:false|no|0)$/i.test(text)) return false;
      throw new ConfigurationError(`${label} must be true or false, got ${JSON.stringify(raw)}`, {
        key: option.name,
      });
    case 'integer':
    case 'number':
      return text !== '' && Number.isFinite(Number(text)) ? Number(text) : raw;
    case 'heartbeat':
      return text === 'server' ? text : text !== '' && Number.isFinite(Number(text)) ? Number(text) : raw;
    case 'object':
    case 'serverConnectionOptions':
      try {
        return JSON.parse(raw) as unknown;
      } catch (error) {
        throw new ConfigurationError(`${label} must be JSON: ${(error as Error).message}`, {
          key: option.name,
        });
      }
  }
}

const findOption = (key: string): ConfigOptionInfo | undefined =>
  configOptions.find((o) => o.name === key || o.rubyName === key || o.rubyName === key.replace(/-/g, '_'));

/** The configuration input given by flags, and which flag set which option (for error messages). */
export function configFromFlags(flags: FlagValues): {
  input: BeetleConfigInput;
  sources: Map<string, string>;
} {
  const input: Record<string, unknown> = {};
  const sources = new Map<string, string>();
  const put = (option: ConfigOptionInfo, raw: string, label: string): void => {
    input[option.name] = parseOptionValue(option, raw, label);
    sources.set(option.name, label);
  };
  for (const entry of listFlag(flags, 'set')) {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new UsageError(`--set needs key=value, got ${JSON.stringify(entry)}`);
    const key = entry.slice(0, eq).trim();
    const option = findOption(key);
    if (option === undefined) {
      throw new ConfigurationError(`unknown option \`${key}\` in --set`, { key });
    }
    put(option, entry.slice(eq + 1), `--set ${key}`);
  }
  for (const [flag, name] of Object.entries(flagOptions)) {
    const raw = stringFlag(flags, flag);
    const option = configOptions.find((o) => o.name === name);
    if (raw !== undefined && option !== undefined) put(option, raw, `--${flag}`);
  }
  return { input: input, sources };
}

const CLI_VARIABLES = new Set(['BEETLE_CONFIG_FILE', 'BEETLE_TARGET_REDIS_PASSWORD']);

/**
 * The merged configuration: defaults < configuration file (`--config-file`, else env `BEETLE_CONFIG_FILE`) <
 * environment (`BEETLE_<RUBY_NAME>`) < flags. Errors are `ConfigurationError`s naming the key (and the flag,
 * when a flag set it).
 */
export async function loadConfig(
  flags: FlagValues,
  env: NodeJS.ProcessEnv,
  onIgnored?: (line: string) => void,
): Promise<BeetleConfig> {
  const file = stringFlag(flags, 'config-file') ?? (env['BEETLE_CONFIG_FILE'] || undefined);
  const readOptions =
    onIgnored === undefined
      ? {}
      : {
          onIgnoredKey: (ignored: { key: string; source: string; reason: string }) => {
            // Read by the CLI itself, not configuration options.
            if (!CLI_VARIABLES.has(ignored.key)) {
              onIgnored(`ignoring ${ignored.key} (${ignored.source}): ${ignored.reason}`);
            }
          },
        };
  const fileInput = file === undefined ? undefined : await loadConfigFile(file, readOptions);
  const envInput = configFromEnv(env, readOptions);
  const { input: flagInput, sources } = configFromFlags(flags);
  try {
    return createConfig(fileInput, envInput, flagInput);
  } catch (error) {
    if (error instanceof ConfigurationError && error.key !== undefined) {
      const flag = sources.get(error.key.split('.')[0] ?? '');
      if (flag !== undefined) {
        throw new ConfigurationError(`${flag}: ${error.message}`, { key: error.key, cause: error });
      }
    }
    throw error;
  }
}

/** `--databases 4,5` (default: the configured `redisDb`). */
export function databasesFlag(flags: FlagValues, config: BeetleConfig): number[] {
  const raw = stringFlag(flags, 'databases');
  if (raw === undefined) return [config.redisDb];
  const parts = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const dbs = parts.map((part) => {
    if (!/^\d+$/.test(part))
      throw new UsageError(`--databases must list database numbers, got ${JSON.stringify(raw)}`);
    return Number(part);
  });
  if (dbs.length === 0) throw new UsageError('--databases must name at least one database');
  return [...new Set(dbs)];
}
