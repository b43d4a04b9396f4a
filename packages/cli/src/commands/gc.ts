import { readFile } from 'node:fs/promises';
import { parseKey } from '@beetle/core/kit';
import { ScanInterruptedError, type MasterWatcher, type RedisMaintenanceClient } from '@beetle/dedup-redis';
import type { CommandContext, CommandSpec } from '../command.js';
import { databasesFlag, durationFlag, stringFlag, UsageError } from '../options.js';
import { Progress } from '../output.js';
import { jsonFlag } from './shared.js';
import { scanDatabase, scanSettings, storeToolFlags, withRestarts } from './scan.js';

/** The Go command's statistics schema (`beetle:lastgc` in db 0). */
export interface GcQueueInfo {
  queue: string;
  total_expiries: number;
  expiries: { hour: number; count: number }[];
  total_orphans: number;
}

export interface GcInfo {
  timestamp: number;
  queues: GcQueueInfo[];
  /** Ours, beyond Go's schema (Go's readers ignore them): the run's totals and databases. */
  messages?: number;
  expired?: number;
  orphans?: number;
  databases?: number[];
}

export const LAST_GC_KEY = 'beetle:lastgc';

interface QueueStats {
  hours: Map<number, number>;
  orphans: number;
}

class GcRun {
  readonly queues = new Map<string, QueueStats>();
  /** Messages collected during a dry run, so their other keys are not counted as orphans. */
  private readonly collectedDry = new Set<string>();
  messages = 0;
  expired = 0;
  orphans = 0;

  constructor(
    private readonly now: number,
    private readonly threshold: number,
    private readonly dryRun: boolean,
  ) {}

  private stats(queue: string): QueueStats {
    let stats = this.queues.get(queue);
    if (stats === undefined) {
      stats = { hours: new Map(), orphans: 0 };
      this.queues.set(queue, stats);
    }
    return stats;
  }

  /** One SCAN batch of `msgid:*` keys. */
  async batch(redis: RedisMaintenanceClient, keys: readonly string[]): Promise<void> {
    const expiresKeys: string[] = [];
    const others: { key: string; msgId: string; queue: string }[] = [];
    for (const key of keys) {
      const parts = parseKey(key);
      if (parts === undefined || parts.queue === '') continue; // not Beetle's schema: left alone
      if (parts.suffix === 'expires') expiresKeys.push(key);
      else if (parts.suffix !== 'status') others.push({ key, msgId: parts.msgId, queue: parts.queue });
      // `:status` keys are skipped: with redis_status_key_expiry_interval they outlive the others on purpose
      // and expire by themselves.
    }

    const doomed: string[] = [];
    for (const entry of await redis.expiries(expiresKeys)) {
      this.messages++;
      // Ruby's pre-2.0 rule (see --help): only messages that expired more than `threshold` seconds ago.
      if (entry.expiresAt < this.now - this.threshold) {
        this.expired++;
        if (this.dryRun) this.collectedDry.add(entry.msgId);
        else doomed.push(entry.msgId);
      } else {
        const hours = this.stats(entry.queue).hours;
        const hour = Math.ceil((entry.expiresAt - this.now) / 3600) || 0;
        hours.set(hour, (hours.get(hour) ?? 0) + 1);
      }
    }
    await redis.deleteMessages(doomed);

    if (others.length === 0) return;
    const alive = await redis.withExpiry([...new Set(others.map((o) => o.msgId))]);
    const orphans = others.filter((o) => !alive.has(o.msgId) && !this.collectedDry.has(o.msgId));
    if (orphans.length === 0) return;
    const deleted = this.dryRun ? orphans.map(() => true) : await redis.deleteEach(orphans.map((o) => o.key));
    orphans.forEach((orphan, i) => {
      if (!deleted[i]) return; // already gone (e.g. collected above)
      this.orphans++;
      this.stats(orphan.queue).orphans++;
    });
  }

  /** Go's order: queues by total expiries (desc), hours desc. Ties by queue name for stable output. */
  info(timestamp: number): GcInfo {
    const queues = [...this.queues].map(([queue, stats]): GcQueueInfo => {
      const expiries = [...stats.hours]
        .map(([hour, count]) => ({ hour, count }))
        .sort((a, b) => b.hour - a.hour);
      return {
        queue,
        total_expiries: expiries.reduce((sum, e) => sum + e.count, 0),
        expiries,
        total_orphans: stats.orphans,
      };
    });
    queues.sort((a, b) => b.total_expiries - a.total_expiries || a.queue.localeCompare(b.queue));
    return { timestamp, queues };
  }
}

/**
 * Go's `--redis-gc-key-file`: only lines that are `:expires` keys are used. Any message id without ":" (Go
 * takes only lowercase hex ids, `[-0-9a-f]*`), as `parseKey` reads them.
 */
const KEY_FILE_LINE = /^(msgid:[^:]+:[^:]*):expires$/;

async function readKeyFile(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read --key-file ${path}: ${(error as Error).message}`);
  }
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => KEY_FILE_LINE.test(line));
}

const RULE = '-'.repeat(62);

function printInfo(ctx: CommandContext, info: GcInfo): void {
  if (info.queues.length > 0) ctx.print.out('active keys in dedup store by queue');
  for (const queue of info.queues) {
    ctx.print.out(RULE);
    ctx.print.out(`${queue.queue}: ${queue.total_expiries}`);
    ctx.print.out(RULE);
    for (const { hour, count } of queue.expiries) {
      ctx.print.out(`${String(hour).padStart(3)}h: ${String(count).padStart(5)}`);
    }
    if (queue.total_orphans > 0) ctx.print.out(`orphans: ${queue.total_orphans}`);
  }
}

export const gcCommand: CommandSpec = {
  name: 'gc',
  aliases: ['garbage_collect_deduplication_store', 'garbage-collect'],
  summary: 'garbage-collect the dedup store (keys of long expired messages, orphan keys)',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Scans msgid:* in each database (Go's garbage_collect_deduplication_store, reference §4.9):
- for every msgid:<queue>:<uuid>:expires key whose message expired MORE than --threshold seconds ago
  (expires < now - threshold), all 8 keys of that message are deleted; younger messages are kept and counted
  per queue and hour until expiry;
- every other key (except :status) whose message has no :expires key is an orphan and is deleted;
- :status keys are skipped: with redis_status_key_expiry_interval they expire by themselves.
The statistics are printed and stored as JSON in db 0 key beetle:lastgc (Go's schema, plus the totals
messages, expired, orphans and the databases scanned, which Go ignores), unless --dry-run.

Why "now - threshold" and not the Go command's "now + threshold" (Ruby weak spot 9): with the Go sign, keys
of messages that expire within the next hour are already collected, while the second copy of a redundant
message (or a delayed retry) may still be on its way; it would then find no keys and run its handler again.
Collecting only messages that expired more than an hour ago is what the pre-2.0 Ruby collector did: an
expired message is dropped by every consumer (Ancient), so its keys are useless by then; the threshold covers
clock differences between hosts and handlers still running when the message expired.`,
  flags: {
    threshold: {
      type: 'string',
      value: '<seconds>',
      description: 'grace period after expiry, seconds or 1h30m (default gc_threshold, 3600)',
    },
    'redis-gc-threshold': {
      type: 'string',
      value: '<seconds>',
      description: 'alias of --threshold (Go name)',
    },
    'dry-run': { type: 'boolean', description: 'count only: delete nothing, store no statistics' },
    'key-file': {
      type: 'string',
      value: '<file>',
      description: 'instead of scanning, check the msgid:…:expires keys listed in this file (no orphans)',
    },
    'redis-gc-key-file': { type: 'string', value: '<file>', description: 'alias of --key-file (Go name)' },
    ...storeToolFlags,
    ...jsonFlag,
  },
  examples: [
    'beetle gc --config-file /etc/beetle/beetle.yml',
    'beetle gc --redis-server /etc/beetle/redis-master --system-name orders --databases 4,5 --dry-run',
  ],
  async run(ctx) {
    const threshold =
      durationFlag(ctx.flags, 'threshold') ??
      durationFlag(ctx.flags, 'redis-gc-threshold') ??
      ctx.config.gcThreshold;
    if (threshold < 0) throw new UsageError('--threshold must not be negative');
    const flags = { ...ctx.flags, databases: ctx.flags['databases'] ?? ctx.flags['redis-gc-databases'] };
    const databases = databasesFlag(flags, ctx.config);
    const { count, pauseMs } = scanSettings(ctx, 10_000);
    const dryRun = ctx.flags['dry-run'] === true;
    const json = ctx.flags['json'] === true;
    const keyFilePath = stringFlag(ctx.flags, 'key-file') ?? stringFlag(ctx.flags, 'redis-gc-key-file');
    const keyFile = keyFilePath === undefined ? undefined : await readKeyFile(keyFilePath);

    const info = await withRestarts(ctx, async (watcher: MasterWatcher, connect) => {
      const run = new GcRun(Math.floor(Date.now() / 1000), threshold, dryRun);
      for (const db of databases) {
        const redis = await connect(db);
        const before = { messages: run.messages, expired: run.expired, orphans: run.orphans };
        const onBatch = async (keys: string[]): Promise<string> => {
          await run.batch(redis, keys);
          return `${run.expired - before.expired} expired, ${run.orphans - before.orphans} orphans`;
        };
        if (keyFile === undefined) {
          const options = { match: 'msgid:*', count, pauseMs, label: `gc db ${db}` };
          await scanDatabase(ctx, redis, watcher, options, onBatch);
        } else {
          const progress = new Progress(ctx.io, `gc db ${db}`, keyFile.length);
          for (let i = 0; i < keyFile.length; i += count) {
            if (ctx.signal.aborted) throw new ScanInterruptedError();
            await watcher.check();
            const extra = await onBatch(keyFile.slice(i, i + count));
            progress.tick(count, extra);
          }
          progress.finish();
        }
        const verb = dryRun ? 'would be' : 'were';
        (json ? ctx.print.err.bind(ctx.print) : ctx.print.out.bind(ctx.print))(
          `db ${db} on ${watcher.master}: ${run.messages - before.messages} messages, ` +
            `${run.expired - before.expired} expired more than ${threshold}s ago ${verb} deleted, ` +
            `${run.orphans - before.orphans} orphan keys ${verb} deleted`,
        );
      }
      const result: GcInfo = {
        ...run.info(Math.floor(Date.now() / 1000)),
        messages: run.messages,
        expired: run.expired,
        orphans: run.orphans,
        databases,
      };
      if (!dryRun) {
        const db0 = await connect(0);
        await db0.set(LAST_GC_KEY, JSON.stringify(result));
      }
      return result;
    });
    if (json) ctx.print.json(info);
    else printInfo(ctx, info);
    return 0;
  },
};
