import {
  withRestarts as restarting,
  type MaintenanceConnect,
  type MasterWatcher,
  type RedisMaintenanceClient,
} from '@beetle/dedup-redis';
import type { CommandContext } from '../command.js';
import { numberFlag, type FlagSpecs } from '../options.js';
import { errorMessage, oneLine, Progress } from '../output.js';

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

/**
 * SCANs one database batch by batch, with a progress bar (terminal) or periodic lines (otherwise) on stderr.
 * Checks the master file between batches; a stop signal ends the scan (`ScanInterruptedError`, exit status 1).
 */
export async function scanDatabase(
  ctx: CommandContext,
  redis: RedisMaintenanceClient,
  watcher: MasterWatcher,
  options: ScanOptions,
  onBatch: (keys: string[]) => Promise<string | void>,
): Promise<void> {
  const progress = new Progress(ctx.io, options.label, await redis.dbsize());
  let extra = '';
  const batches = redis.scanKeys(options.match, options.count, {
    pauseMs: options.pauseMs,
    signal: ctx.signal,
    beforeBatch: () => watcher.check(),
  });
  for await (const keys of batches) {
    extra = (await onBatch(keys)) ?? extra;
    progress.tick(options.count, extra);
  }
  progress.finish(extra);
}

/**
 * `withRestarts` of `@beetle/dedup-redis` for a command: the configuration's Redis, the command's environment
 * (`OPENSSL_SSL_VERIFY_NONE`), and each start-over reported on stderr (once while the reason stays the same).
 */
export function withRestarts<T>(
  ctx: CommandContext,
  run: (watcher: MasterWatcher, connect: MaintenanceConnect) => Promise<T>,
): Promise<T> {
  let lastReport = '';
  return restarting(ctx.config, run, {
    env: ctx.io.env,
    onRestart: (error) => {
      const report = `beetle: ${oneLine(errorMessage(error))}; starting over`;
      if (report !== lastReport) ctx.print.err(report);
      lastReport = report;
    },
  });
}
