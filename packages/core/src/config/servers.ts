import { ConfigurationError } from '../errors.js';
import type { BeetleConfig } from './options.js';

/** Everything needed to connect to one broker and to its management API. */
export interface BrokerAddress {
  /** The server string as configured (`host:port`), the key of `serverConnectionOptions`. */
  readonly server: string;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly vhost: string;
  readonly tls: boolean;
  /** RabbitMQ management API port: `"1" + port` (5672 → 15672, 5671 → 15671), as Ruby derives it. */
  readonly managementPort: number;
}

export const DEFAULT_AMQP_PORT = 5672;

/**
 * Ruby's broker list rule: split on commas (with surrounding spaces), drop blanks and duplicates, keep order.
 * Arrays are treated as already split, but each entry is still trimmed.
 */
export function parseServerList(value: string | readonly string[]): string[] {
  const parts = typeof value === 'string' ? value.split(',') : value;
  return [...new Set(parts.map((s) => s.trim()).filter((s) => s !== ''))];
}

/**
 * Splits `host`, `host:port` or `[ipv6]:port` (port defaults to 5672, as in Ruby). Throws a plain `Error`
 * describing the problem; callers wrap it with the key at fault.
 */
export function parseServerAddress(server: string): { host: string; port: number } {
  const match = /^(?:\[([^\]\s]+)\]|([^\s:,[\]]+))(?::(\d+))?$/.exec(server);
  const host = match?.[1] ?? match?.[2];
  if (match === null || host === undefined) {
    throw new Error(`invalid server ${JSON.stringify(server)}: expected "host:port"`);
  }
  const port = match[3] === undefined ? DEFAULT_AMQP_PORT : Number(match[3]);
  if (port < 1 || port > 65535) throw new Error(`invalid port in server ${JSON.stringify(server)}`);
  return { host, port };
}

/**
 * Ruby's `connection_options_for_server`: host and port from the server string, the global user, password and
 * vhost, then `serverConnectionOptions[server]` (exact key) on top.
 */
export function brokerAddress(config: BeetleConfig, server: string): BrokerAddress {
  let parsed: { host: string; port: number };
  try {
    parsed = parseServerAddress(server);
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { key: 'servers', cause: error });
  }
  const options = config.serverConnectionOptions;
  const overrides = Object.hasOwn(options, server) ? (options[server] ?? {}) : {};
  const port = overrides.port ?? parsed.port;
  return {
    server,
    host: overrides.host ?? parsed.host,
    port,
    user: overrides.user ?? config.user,
    password: overrides.password ?? config.password,
    vhost: overrides.vhost ?? config.vhost,
    tls: overrides.tls ?? false,
    managementPort: Number(`1${port}`),
  };
}
