import { isRedisAddress } from '@beetle/dedup-redis';
import { NoRedisMasterError, type BeetleConfig } from '@beetle/core';
import type { CommandContext } from '../command.js';
import { numberFlag, type FlagSpecs } from '../options.js';
import { errorMessage, oneLine, Progress } from '../output.js';
import {
  connectRedis,
  RedisConnectionError,
  resolveRedisMaster,
  verifiesTls,
  type RespClient,
} from '../redis.js';

/** Flags of the dedup store tools (the Go command's `--redis-gc-*` names are accepted as aliases). */
export const storeToolFlags: FlagSpecs = {
  databases: {
    type: 'string',
    value: '<n,n>',
    description: 'databases to process, comma-separated (default: redis_db, i.e. 4)',
  },
  'redis-gc-databases': { type: 'string', value: '<n,n>', description: 'alias of --databases (Go name)' },
  batch: {
    type: 'string',
    value: '<n>',
    description: 'SCAN COUNT per round trip (default as in Go: 10000; delete-keys, copy-keys 1000)',
  },
  pause: {
    type: 'string',
    value: '<seconds>',
    description: 'pause between two SCAN batches, to spare a busy Redis (default 0.1)',
  },
};

/** The master moved while scanning: the run starts over (as the Go command does). */
export class MasterChangedError extends Error {
  override readonly name = 'MasterChangedError';
}

/** Escapes Redis glob characters, so a queue prefix matches literally. */
export const escapeGlob = (text: string): string => text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);

/** Follows the redis master file (if `redis_server` is one), looking at it at most once per second. */
export class MasterWatcher {
  private lastCheck = 0;

  private constructor(
    private readonly config: BeetleConfig,
    public master: string,
  ) {}

  static async create(config: BeetleConfig): Promise<MasterWatcher> {
    return new MasterWatcher(config, await resolveRedisMaster(config));
  }

  /** Throws `MasterChangedError` when the file names another master now. */
  async check(): Promise<void> {
    if (isRedisAddress(this.config.redisServer.trim())) return;
    const now = Date.now();
    if (now - this.lastCheck < 1000) return;
    this.lastCheck = now;
    const master = await resolveRedisMaster(this.config).catch(() => undefined);
    if (master !== undefined && master !== this.master) {
      const old = this.master;
      this.master = master;
      throw new MasterChangedError(`the Redis master changed from ${old} to ${master}`);
    }
  }
}

export interface ScanOptions {
  readonly match: string;
  readonly count: number;
  readonly pauseMs: number;
  readonly label: string;
}

/** The SCAN batch size and pause flags, with the command's defaults. */
export function scanSettings(ctx: CommandContext, defaultCount: number): { count: number; pauseMs: number } {
  const count = numberFlag(ctx.flags, 'batch', { integer: true, min: 1 }) ?? defaultCount;
  const pause = numberFlag(ctx.flags, 'pause', { min: 0 }) ?? 0.1;
  return { count, pauseMs: pause * 1000 };
}

/** A stop signal arrived during a scan (exit status 1: the run is incomplete). */
export const interrupted = (): Error =>
  Object.assign(new Error('stopped by a signal before the scan completed'), { reason: 'interrupted' });

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * SCANs one database batch by batch, with a progress bar (terminal) or periodic lines (otherwise) on stderr.
 * Checks the master file between batches.
 */
export async function scanDatabase(
  ctx: CommandContext,
  redis: RespClient,
  watcher: MasterWatcher,
  options: ScanOptions,
  onBatch: (keys: string[]) => Promise<string | void>,
): Promise<void> {
  const progress = new Progress(ctx.io, options.label, await redis.dbsize());
  let cursor = '0';
  let extra = '';
  do {
    if (ctx.signal.aborted) throw interrupted();
    await watcher.check();
    const [next, keys] = await redis.scan(cursor, options.match, options.count);
    cursor = next;
    extra = (await onBatch(keys)) ?? extra;
    progress.tick(options.count, extra);
    if (cursor !== '0' && options.pauseMs > 0) await sleep(options.pauseMs);
  } while (cursor !== '0');
  progress.finish(extra);
}

/**
 * Runs `run` against the current master; when the master changes, starts over at once (after a second); when
 * there is no master or the connection fails, starts over every second until `redis_failover_timeout` has
 * passed since the first of these failures in a row. Restarts are reported on stderr.
 */
export async function withRestarts<T>(
  ctx: CommandContext,
  run: (watcher: MasterWatcher, connect: (db: number) => Promise<RespClient>) => Promise<T>,
): Promise<T> {
  let failingSince: number | undefined;
  let lastReport = '';
  for (;;) {
    const clients: RespClient[] = [];
    try {
      const watcher = await MasterWatcher.create(ctx.config);
      const connect = async (db: number): Promise<RespClient> => {
        const client = await connectRedis(ctx.config, watcher.master, db, {
          rejectUnauthorized: verifiesTls(ctx.io.env),
        });
        clients.push(client);
        return client;
      };
      return await run(watcher, connect);
    } catch (error) {
      // NoRedisMasterError: e.g. the Go daemons rewrite the master file non-atomically (briefly empty).
      const retriable =
        error instanceof MasterChangedError ||
        error instanceof RedisConnectionError ||
        error instanceof NoRedisMasterError;
      if (!retriable) throw error;
      // A master change is progress (a failover happened); only consecutive connection failures count.
      if (error instanceof MasterChangedError) failingSince = undefined;
      else failingSince ??= Date.now();
      if (failingSince !== undefined && Date.now() - failingSince >= ctx.config.redisFailoverTimeout * 1000)
        throw error;
      const report = `beetle: ${oneLine(errorMessage(error))}; starting over`;
      if (report !== lastReport) ctx.print.err(report);
      lastReport = report;
      await sleep(1000);
    } finally {
      for (const client of clients) client.close();
    }
  }
}
