/**
 * What the harness and its worker processes share: the worker settings (passed as JSON in `CHAOS_WORKER`), the
 * IPC control messages, and the line format of the append-only record files. Records are the bookkeeping outside
 * the system under test: a worker writes each line with `writeSync` before it goes on, so a SIGKILL right after
 * cannot lose it.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { createConfig, Topology, type BeetleConfig, type Logger } from '@beetle/core';

/** Environment variable carrying a worker's settings. */
export const WORKER_ENV = 'CHAOS_WORKER';

/** Timing knobs of the system under test, chosen so that every fault resolves within a run. */
export interface SystemSettings {
  /** Brokers, `host:port`. */
  readonly servers: readonly string[];
  /** Path of the redis master file (one `host:port` line), re-read by the consumers when it changes. */
  readonly masterFile: string;
  /**
   * With `--redis sentinel`: `sentinel://…/chaos`, the consumers' `redisServer` instead of the master file,
   * with `redisWaitReplicas` 1.
   */
  readonly sentinelUrl?: string | undefined;
  /** Queue (and exchange, message) name of this run. */
  readonly queue: string;
  /** Handler options: attempts, timeout (s), delay (s). */
  readonly attempts: number;
  readonly handlerTimeout: number;
  readonly handlerDelay: number;
  /** Handlers running at once per consumer process; `default`: left to the library. */
  readonly concurrency: number | 'default';
  readonly prefetch: number | 'default';
  /** `redisStatusKeyExpiryInterval` of the consumers (0 = Ruby's default). */
  readonly statusKeyExpiry: number;
  /** `redisCompletedStatusTtl` of the consumers (600 = Beetle's default, 0 = Ruby's behaviour). */
  readonly completedStatusTtl: number;
}

export interface PublisherSettings extends SystemSettings {
  readonly role: 'publisher';
  readonly index: number;
  readonly recordFile: string;
  /** Messages this publisher sends, and at which rate (msgs/s). */
  readonly count: number;
  readonly rate: number;
  /** Publishes awaiting their confirm at once. */
  readonly window: number;
}

export interface ConsumerSettings extends SystemSettings {
  readonly role: 'consumer';
  readonly index: number;
  readonly recordFile: string;
  /** Handler run time range in ms (uniform). */
  readonly workMinMs: number;
  readonly workMaxMs: number;
}

export type WorkerSettings = PublisherSettings | ConsumerSettings;

/** Harness → worker. */
export type ToWorker =
  | { readonly type: 'go' }
  /** Consumer: hold the next handler run (before it completes) and report it, to be SIGKILLed mid-handler. */
  | { readonly type: 'arm-kill' }
  | { readonly type: 'stop' };

/** Worker → harness. */
export type FromWorker =
  | { readonly type: 'ready'; readonly pid: number }
  | { readonly type: 'holding'; readonly id: string; readonly pid: number }
  | { readonly type: 'fatal'; readonly pid: number; readonly error: string };

/**
 * Record lines (space separated, one per event):
 * - `A <id> <ms>`: publish attempted (publisher called `publish`);
 * - `C <id> <ms> <copies>`: publish confirmed by `copies` brokers (1 or 2);
 * - `F <id> <ms> <error>`: publish rejected or timed out (outcome unknown);
 * - `H <id> <ms> <pid>`: consumer holds this handler run, to be killed in it;
 * - `D <id> <ms> <pid> <attempt> <server>`: handler completed (written before the handler returns);
 * - `P <id> <ms> <pid> <outcome> <server> <settled> <redelivered 0|1>`: a delivery finished processing
 *   (diagnostics: the history of a duplicated or lost id).
 */
export type RecordKind = 'A' | 'C' | 'F' | 'H' | 'D' | 'P';

/** An append-only record file written with synchronous writes. */
export class RecordFile {
  private readonly fd: number;

  constructor(path: string) {
    this.fd = openSync(path, 'a');
  }

  write(kind: RecordKind, ...fields: (string | number)[]): void {
    writeSync(this.fd, `${kind} ${fields.join(' ')}\n`);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** The Beetle configuration every worker uses (fast failure detection, short retry intervals). */
export function workerConfig(settings: SystemSettings): BeetleConfig {
  return createConfig({
    servers: [...settings.servers],
    redisServer: settings.sentinelUrl ?? settings.masterFile,
    redisWaitReplicas: settings.sentinelUrl === undefined ? 0 : 1,
    redisFailoverTimeout: 30,
    redisConnectTimeout: 2,
    redisReadTimeout: 2,
    redisStatusKeyExpiryInterval: settings.statusKeyExpiry,
    redisCompletedStatusTtl: settings.completedStatusTtl,
    publishTimeout: 5,
    publisherConnectTimeout: 2,
    publisherReadResponseTimeout: 3,
    deadServerRetryInterval: 2,
    heartbeat: 3,
    subscriberHeartbeat: 3,
    subscriberConnectTimeout: 2,
    subscriberReconnectDelay: 0.5,
    subscriberReconnectMaxDelay: 5,
    rejectRequeueDelay: 0.5,
    prefetchCount: settings.prefetch === 'default' ? undefined : settings.prefetch,
    subscriberConcurrency: settings.concurrency === 'default' ? undefined : settings.concurrency,
    stopTimeout: 5,
  });
}

/** The run's topology: one redundant message routed to one queue. */
export function workerTopology(settings: SystemSettings): Topology {
  return new Topology()
    .registerQueue(settings.queue, { exchange: settings.queue, key: settings.queue })
    .registerMessage(settings.queue, { exchange: settings.queue, key: settings.queue, redundant: true });
}

/** Reads the worker's settings from the environment. */
export function readSettings<R extends WorkerSettings['role']>(
  role: R,
): Extract<WorkerSettings, { role: R }> {
  const raw = process.env[WORKER_ENV];
  if (raw === undefined)
    throw new Error(`${WORKER_ENV} is not set: workers are started by the chaos harness`);
  const settings = JSON.parse(raw) as WorkerSettings;
  if (settings.role !== role) throw new Error(`${WORKER_ENV} is for a ${settings.role}, not a ${role}`);
  return settings as Extract<WorkerSettings, { role: R }>;
}

/** Sends to the harness, ignoring a closed channel (the harness may be gone). */
export function tell(message: FromWorker): void {
  if (process.send && process.connected) process.send(message);
}

/** Beetle's warnings and errors go to stderr (the harness keeps them in the run directory). */
export function stderrLogger(prefix: string): Logger {
  const line =
    (level: string) =>
    (first: unknown, ...rest: unknown[]): void => {
      const context = typeof first === 'object' && first !== null ? first : undefined;
      const message = context === undefined ? first : rest[0];
      let extra = '';
      if (context !== undefined) {
        const err = (context as { err?: unknown }).err;
        const brief = { ...(context as Record<string, unknown>) };
        delete brief.err;
        extra = ` ${safeJson(brief)}${err instanceof Error ? ` err=${err.message}` : ''}`;
      }
      process.stderr.write(`${new Date().toISOString()} ${prefix} ${level} ${String(message)}${extra}\n`);
    };
  const noop = (): void => undefined;
  return { debug: noop, info: line('info'), warn: line('warn'), error: line('error') };
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    return '[unserializable]';
  }
}

/**
 * Leaves when the harness goes away (IPC channel closed): no orphaned workers. Ignores Ctrl-C (SIGINT goes to
 * the whole process group): the harness decides when its workers end.
 */
export function exitWithParent(): void {
  process.on('disconnect', () => process.exit(3));
  process.on('SIGINT', () => undefined);
}
