import { configOptions, type BeetleConfig } from '@beetle/core';
import type { CommandSpec } from '../command.js';
import { jsonFlag } from './shared.js';

export const MASK = '********';

const SECRET_OPTIONS = new Set(['password', 'redisPassword']);

/** Keys of server_connection_options whose values are secrets whatever they look like (pass, passphrase...). */
const SECRET_KEY = /pass|secret|token|credential/i;

/** A private key given inline; file paths (of keys, certificates, PKCS#12 bundles) are shown. */
const PRIVATE_KEY_PEM = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/;

/** A server's connection options with secrets masked, including those the broker layer passes through. */
function maskedConnectionValue(key: string, value: unknown): unknown {
  if (SECRET_KEY.test(key) && value !== '' && value !== undefined && value !== null) return MASK;
  if (typeof value === 'string') return PRIVATE_KEY_PEM.test(value) ? MASK : value;
  if (Array.isArray(value)) return value.map((inner) => maskedConnectionValue('', inner));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskedConnectionValue(k, v)]));
  }
  return value;
}

/** A copy of the configuration's value with secrets (also per-server ones) masked. */
function masked(name: string, value: unknown): unknown {
  if (SECRET_OPTIONS.has(name)) return value === undefined || value === '' ? value : MASK;
  if (name === 'serverConnectionOptions' && value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([server, options]) => [server, maskedConnectionValue('', options)]),
    );
  }
  return value;
}

/** Ruby-named entries of the configuration, secrets masked. */
export function configEntries(config: BeetleConfig): [string, unknown][] {
  return configOptions.map((option) => [option.rubyName, masked(option.name, config[option.name])]);
}

/** A YAML scalar or flow collection (JSON is valid YAML; plain strings stay unquoted when that is safe). */
function yamlValue(value: unknown): string {
  if (value === undefined || value === null) return '~';
  if (Array.isArray(value)) return JSON.stringify(value.join(','));
  if (typeof value === 'string') {
    const plain =
      /^[A-Za-z0-9_./][A-Za-z0-9_./:@,\- ]*$/.test(value) &&
      !/^(?:true|false|yes|no|on|off|null|~)$/i.test(value);
    return plain && !/^\d/.test(value) && !value.endsWith(' ') ? value : JSON.stringify(value);
  }
  return JSON.stringify(value);
}

export const configCommand: CommandSpec = {
  name: 'config',
  aliases: ['dump'],
  summary: 'print the merged configuration (secrets masked)',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Prints the configuration the other commands would use: defaults, overridden by the configuration
file (--config-file or BEETLE_CONFIG_FILE), the environment (BEETLE_<RUBY_NAME>) and flags, in that order.
Keys are Ruby's names, so the output (with real passwords) can serve as a Beetle YAML file; server lists
are printed in Ruby's comma-separated form. Passwords, TLS passphrases and private keys given inline (in
server_connection_options) are masked; file paths are shown.`,
  flags: { ...jsonFlag },
  examples: ['beetle config --config-file beetle.yml', 'BEETLE_REDIS_DB=5 beetle config --json'],
  run(ctx) {
    const entries = configEntries(ctx.config);
    if (ctx.flags['json'] === true) {
      ctx.print.json(
        Object.fromEntries(entries.map(([key, value]) => [key, value === undefined ? null : value])),
      );
    } else {
      for (const [key, value] of entries) ctx.print.out(`${key}: ${yamlValue(value)}`);
    }
    return Promise.resolve(0);
  },
};
