/**
 * Shared helpers of the examples: configuration from the environment, a console logger, `waitFor`, run ids,
 * cleanup of the queues an example declared (RabbitMQ management API) and the "run as a script" glue.
 */
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromEnv, createConfig, Topology } from '@beetle/core';
import { brokerAddress, parseKey } from '@beetle/core/kit';
import type { BeetleConfig, BeetleConfigInput, Logger } from '@beetle/core';
import type { RedisDedupStore } from '@beetle/dedup-redis';

export const DEFAULT_SERVERS = '127.0.0.1:5672,127.0.0.1:5673';
export const DEFAULT_REDIS_SERVER = '127.0.0.1:6379';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** What every example's `main()` accepts. */
export interface ExampleOptions {
  /** Where `BEETLE_*` variables are read from (default `process.env`). */
  readonly env?: NodeJS.ProcessEnv;
  /** Configuration applied last (over the example's own settings and the environment). */
  readonly config?: BeetleConfigInput;
  /** Output of the example (default `console.log`). */
  readonly print?: (line: string) => void;
  /** Level of Beetle's own log lines (default `BEETLE_EXAMPLE_LOG_LEVEL`, else `warn`). */
  readonly logLevel?: LogLevel;
}

/** What every example's `main()` resolves with. */
export interface ExampleSummary {
  readonly example: string;
  /** Whether the example's expectation held (the exit code when run as a script). */
  readonly ok: boolean;
  readonly elapsedMs: number;
}

/**
 * The configuration of an example: defaults of the examples (two local brokers, local Redis, policies applied
 * through the management API), then `BEETLE_*` variables (e.g. `BEETLE_SERVERS`, `BEETLE_REDIS_SERVER`), then
 * the example's own settings, then the caller's.
 */
export function exampleConfig(
  options: ExampleOptions,
  settings: BeetleConfigInput = {},
  logger?: Logger,
): BeetleConfig {
  const env = options.env ?? process.env;
  return createConfig(
    {
      servers: DEFAULT_SERVERS,
      redisServer: DEFAULT_REDIS_SERVER,
      // No process consumes `beetle-policy-updates` here: apply queue policies directly.
      updateQueuePropertiesSynchronously: true,
      subscriberReconnectDelay: 1,
      subscriberReconnectMaxDelay: 5,
      stopTimeout: 5,
    },
    configFromEnv(env, logger ? { onIgnoredKey: (k) => logger.debug(`ignoring ${k.key}: ${k.reason}`) } : {}),
    settings,
    options.config,
  );
}

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

function describe(value: unknown): string {
  if (value instanceof Error) return value.message;
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** A logger printing Beetle's log lines at or above `level` as `[beetle warn] message (key=value …)`. */
export function consoleLogger(
  level: LogLevel = 'warn',
  print: (line: string) => void = (line) => console.error(line),
): Logger {
  const make =
    (name: Exclude<LogLevel, 'silent'>) =>
    (first: unknown, ...rest: unknown[]): void => {
      if (LEVELS[name] < LEVELS[level]) return;
      let message: string;
      let context = '';
      if (typeof first === 'string') {
        message = [first, ...rest.map(describe)].join(' ');
      } else {
        message = rest.map(describe).join(' ');
        const entries = Object.entries((first ?? {}) as Record<string, unknown>).filter(
          ([, v]) => v !== undefined,
        );
        if (entries.length > 0) context = ` (${entries.map(([k, v]) => `${k}=${describe(v)}`).join(', ')})`;
      }
      print(`[beetle ${name}] ${message}${context}`);
    };
  return { debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error') };
}

/** The printer and logger of an example run. */
export function output(options: ExampleOptions): { print: (line: string) => void; logger: Logger } {
  const print = options.print ?? ((line: string) => console.log(line));
  const env = options.env ?? process.env;
  const fromEnv = env.BEETLE_EXAMPLE_LOG_LEVEL as LogLevel | undefined;
  const level = options.logLevel ?? (fromEnv !== undefined && fromEnv in LEVELS ? fromEnv : 'warn');
  return { print, logger: consoleLogger(level, print) };
}

/** A short random id, so that parallel runs use their own queues. */
export const runId = (): string => randomBytes(4).toString('hex');

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

/** Polls `predicate` every `intervalMs` until it holds (true) or `timeoutMs` pass (false). */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 25,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
}

/** Calls the RabbitMQ management API of a broker ("1" + AMQP port, the broker's credentials). */
export async function management(
  config: BeetleConfig,
  server: string,
  method: string,
  path: string,
): Promise<Response> {
  const address = brokerAddress(config, server);
  const auth = Buffer.from(`${address.user}:${address.password}`).toString('base64');
  const scheme = address.tls ? 'https' : 'http';
  return fetch(`${scheme}://${address.host}:${address.managementPort}${path}`, {
    method,
    headers: { authorization: `Basic ${auth}` },
    signal: AbortSignal.timeout(5000),
  });
}

/**
 * Deletes what an example declared on every broker: the queues (with their dead letter queues and policies)
 * and the exchanges. Errors (e.g. a broker that is down) are ignored. Resolves with the number of deletions.
 */
export async function deleteTopology(
  config: BeetleConfig,
  what: { readonly queues?: readonly string[]; readonly exchanges?: readonly string[] },
): Promise<number> {
  const paths: string[] = [];
  const vhost = encodeURIComponent(config.vhost);
  for (const queue of what.queues ?? []) {
    const dlq = Topology.deadLetterQueueName(queue);
    for (const name of [queue, dlq]) {
      paths.push(`/api/queues/${vhost}/${encodeURIComponent(name)}`);
      paths.push(`/api/policies/${vhost}/${encodeURIComponent(`${name}_policy`)}`);
    }
  }
  for (const exchange of what.exchanges ?? [])
    paths.push(`/api/exchanges/${vhost}/${encodeURIComponent(exchange)}`);
  const results = await Promise.all(
    config.servers.flatMap((server) =>
      paths.map(async (path) => {
        try {
          const response = await management(config, server, 'DELETE', path);
          await response.body?.cancel();
          return response.ok ? 1 : 0;
        } catch {
          return 0;
        }
      }),
    ),
  );
  return results.reduce<number>((a, b) => a + b, 0);
}

/** Ready messages of a queue summed over the brokers that answer (management API). */
export async function queueLength(config: BeetleConfig, queue: string): Promise<number> {
  const vhost = encodeURIComponent(config.vhost);
  const counts = await Promise.all(
    config.servers.map(async (server) => {
      try {
        const response = await management(
          config,
          server,
          'GET',
          `/api/queues/${vhost}/${encodeURIComponent(queue)}`,
        );
        if (!response.ok) {
          await response.body?.cancel();
          return 0;
        }
        const body = (await response.json()) as { messages?: number };
        return body.messages ?? 0;
      } catch {
        return 0;
      }
    }),
  );
  return counts.reduce((a, b) => a + b, 0);
}

/**
 * Dedup keys (`msgid:<queue>:*`) left in Redis for a queue, besides the completed status and `expires` every
 * completed message keeps for `redisCompletedStatusTtl` (they expire by themselves).
 */
export async function dedupKeysLeft(store: RedisDedupStore, queue: string): Promise<number> {
  let count = 0;
  for await (const key of store.scanKeys({ match: `msgid:${queue}:*` })) {
    const suffix = parseKey(key)?.suffix;
    if (suffix !== 'status' && suffix !== 'expires') count++;
  }
  return count;
}

/** Deletes the dedup keys of a queue (what Beetle's garbage collection would do once they expire). */
export async function deleteDedupKeys(store: RedisDedupStore, queue: string): Promise<number> {
  const ids = new Set<string>();
  for await (const key of store.scanKeys({ match: `msgid:${queue}:*` })) {
    const parsed = parseKey(key);
    if (parsed !== undefined) ids.add(parsed.msgId);
  }
  let deleted = 0;
  for (const id of ids) deleted += await store.deleteMessageKeys(id);
  return deleted;
}

/** Formats a summary as aligned `key: value` lines. */
export function formatSummary(summary: object): string {
  const entries = Object.entries(summary);
  const width = Math.max(...entries.map(([k]) => k.length));
  return entries.map(([k, v]) => `  ${k.padEnd(width)}  ${describe(v)}`).join('\n');
}

/** Whether the module at `url` is the script node was started with. */
export function isScript(url: string): boolean {
  const entry = process.argv[1];
  return entry !== undefined && resolve(entry) === fileURLToPath(url);
}

/**
 * When the module at `url` was started as a script: runs `main`, prints the summary (with `format`, default
 * `formatSummary`) and sets the exit code (1 when `ok` is false or `main` threw). A process that does not exit
 * by itself within a few seconds after that is ended.
 */
export function runIfScript<S extends ExampleSummary>(
  url: string,
  main: () => Promise<S>,
  format: (summary: S) => string = (s) => `summary:\n${formatSummary(s)}`,
): void {
  if (!isScript(url)) return;
  const finish = (code: number): void => {
    process.exitCode = code;
    setTimeout(() => {
      console.error('example did not exit by itself; forcing exit');
      process.exit(code);
    }, 3000).unref();
  };
  main().then(
    (summary) => {
      console.log(format(summary));
      if (!summary.ok) console.log(`${summary.example}: EXPECTATION FAILED`);
      finish(summary.ok ? 0 : 1);
    },
    (error: unknown) => {
      console.error(error);
      finish(1);
    },
  );
}
