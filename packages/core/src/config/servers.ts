import { ConfigurationError } from '../errors.js';
import type { BeetleConfig, ServerConnectionOptions } from './options.js';

/**
 * TLS settings of one broker, from its `serverConnectionOptions` (Bunny's names as fallbacks). Certificates and
 * keys are PEM text or file paths; the broker layer reads the files when it connects.
 */
export interface BrokerTlsOptions {
  readonly ca?: readonly string[];
  readonly cert?: string;
  readonly key?: string;
  readonly passphrase?: string;
  readonly pfx?: string;
  readonly servername?: string;
  readonly rejectUnauthorized?: boolean;
}

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
  /** Only with `tls`, and only when the server has TLS settings; else Node's defaults apply. */
  readonly tlsOptions?: BrokerTlsOptions;
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
 * Splits `host`, `host:port` or `[ipv6]:port` (port defaults to 5672, as in Ruby). Throws a
 * `ConfigurationError` describing the problem; the configuration's validation rethrows it with the key at fault.
 */
export function parseServerAddress(server: string): { host: string; port: number } {
  const match = /^(?:\[([^\]\s]+)\]|([^\s:,[\]]+))(?::(\d+))?$/.exec(server);
  const host = match?.[1] ?? match?.[2];
  if (match === null || host === undefined) {
    // A URL's password must not end up in an error message or a log line.
    const shown = JSON.stringify(server.replace(/\/\/([^/@]*?):[^/@]*@/g, '//$1:********@'));
    const hint = /^[a-z][a-z0-9+.-]*:\/\//i.test(server)
      ? ' (not a URL: credentials and TLS go into server_connection_options)'
      : '';
    throw new ConfigurationError(`invalid server ${shown}: expected "host:port"${hint}`);
  }
  const port = match[3] === undefined ? DEFAULT_AMQP_PORT : Number(match[3]);
  if (port < 1 || port > 65535) {
    throw new ConfigurationError(`invalid port in server ${JSON.stringify(server)}`);
  }
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
    ...(overrides.tls === true ? tlsOptionsOf(overrides) : {}),
    managementPort: Number(`1${port}`),
  };
}

/** `{ tlsOptions }` when the server has any TLS setting (validated by `createConfig`), else `{}`. */
function tlsOptionsOf(overrides: ServerConnectionOptions): { tlsOptions?: BrokerTlsOptions } {
  const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);
  const ca: unknown = overrides.ca ?? overrides['tls_ca_certificates'];
  const verify: unknown = overrides.rejectUnauthorized ?? overrides['verify_peer'];
  const options: Record<string, unknown> = {
    ca:
      typeof ca === 'string' ? [ca] : Array.isArray(ca) ? ca.filter((c) => typeof c === 'string') : undefined,
    cert: text(overrides.cert ?? overrides['tls_cert']),
    key: text(overrides.key ?? overrides['tls_key']),
    passphrase: text(overrides.passphrase),
    pfx: text(overrides.pfx),
    servername: text(overrides.servername),
    rejectUnauthorized: typeof verify === 'boolean' ? verify : undefined,
  };
  const set = Object.entries(options).filter(([, value]) => value !== undefined);
  return set.length === 0 ? {} : { tlsOptions: Object.fromEntries(set) };
}
