import { ConfigurationError } from '../errors.js';
import {
  configOptions,
  type BeetleConfigInput,
  type ConfigOptionInfo,
  type ConfigReadOptions,
} from './options.js';
import { closest, normalizeOption, type Subject } from './validate.js';

/** Read by the Go daemons only: no typo suggestion for them. */
const GO_DAEMON_VARIABLES = new Set(['BEETLE_DIAL_TIMEOUT', 'BEETLE_CONSUL_TOKEN']);

const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$/i;

/** Turns the string into the option's type; unparsable numbers stay strings so validation reports them. */
function parseEnvValue(option: ConfigOptionInfo, raw: string, subject: Subject): unknown {
  const text = raw.trim();
  switch (option.type) {
    case 'string':
      return option.optional === true && raw === '' ? undefined : raw;
    case 'serverList':
      return raw;
    case 'boolean':
      if (/^(?:true|1)$/i.test(text)) return true;
      if (/^(?:false|0)$/i.test(text)) return false;
      throw new ConfigurationError(
        `${subject.label} must be true, false, 1 or 0, got ${JSON.stringify(raw)}`,
        {
          key: subject.key,
        },
      );
    case 'integer':
    case 'number':
      return NUMBER.test(text) ? Number(text) : raw;
    case 'heartbeat':
      return text === 'server' ? text : NUMBER.test(text) ? Number(text) : raw;
    case 'object':
    case 'serverConnectionOptions':
      try {
        return JSON.parse(raw) as unknown;
      } catch (error) {
        throw new ConfigurationError(`${subject.label} must be JSON: ${(error as Error).message}`, {
          key: subject.key,
          cause: error,
        });
      }
  }
}

/**
 * Reads `BEETLE_<RUBY_NAME>` variables (e.g. `BEETLE_SERVERS`, `BEETLE_REDIS_DB`, `BEETLE_HEARTBEAT=server`,
 * JSON for `BEETLE_SERVER_CONNECTION_OPTIONS` and `BEETLE_BROKER_DEFAULT_POLICY`) into a validated input.
 * Errors name the variable. Other `BEETLE_*` variables are not errors, because other tools share the prefix (the
 * Go daemons read `BEETLE_DIAL_TIMEOUT`, `BEETLE_CONSUL_TOKEN`); they are passed to `onIgnoredKey`, which can
 * log them to catch typos.
 */
export function configFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  options: ConfigReadOptions = {},
): BeetleConfigInput {
  const input: Record<string, unknown> = {};
  const envNames = new Set<string>();
  for (const option of configOptions) {
    envNames.add(option.envName);
    const raw = env[option.envName];
    if (raw === undefined) continue;
    const subject = {
      key: option.name,
      label: `environment variable ${option.envName} (option \`${option.name}\`)`,
    };
    const value = normalizeOption(option, parseEnvValue(option, raw, subject), subject);
    if (value !== undefined) input[option.name] = value;
  }
  if (options.onIgnoredKey !== undefined) {
    for (const name of Object.keys(env)) {
      if (!name.startsWith('BEETLE_') || envNames.has(name)) continue;
      const suggestion = GO_DAEMON_VARIABLES.has(name) ? undefined : closest(name, envNames);
      const hint = suggestion === undefined ? '' : `; did you mean ${suggestion}?`;
      options.onIgnoredKey({ key: name, source: 'environment', reason: `not a Beetle client option${hint}` });
    }
  }
  return input;
}
