import { KEY_SUFFIXES, parseKey, rubyToI } from '@beetle/core';
import { isRedisAddress } from '@beetle/dedup-redis';
import type { CommandContext, CommandSpec } from '../command.js';
import {
  databasesFlag,
  durationFlag,
  numberFlag,
  stringFlag,
  UsageError,
  type FlagValues,
} from '../options.js';
import { RespClient, type RespArg } from '../redis.js';
import { escapeGlob, scanDatabase, scanSettings, storeToolFlags, withRestarts } from './scan.js';

const queuePrefixFlag = {
  'queue-prefix': {
    type: 'string',
    value: '<prefix>',
    description: 'only messages of queues whose names start with this (required; "" for all queues)',
  },
} as const;

const databasesOf = (ctx: CommandContext): number[] =>
  databasesFlag(
    { ...ctx.flags, databases: ctx.flags['databases'] ?? ctx.flags['redis-gc-databases'] },
    ctx.config,
  );

function requiredPrefix(flags: FlagValues): string {
  const prefix = stringFlag(flags, 'queue-prefix');
  if (prefix === undefined)
    throw new UsageError('--queue-prefix is required (use --queue-prefix "" for all queues)');
  return prefix;
}

/** `msgid:<prefix>*:expires` keys of a batch with their values (keys deleted meanwhile are left out). */
async function expiries(
  redis: RespClient,
  keys: readonly string[],
): Promise<{ key: string; msgId: string; expiresAt: number; raw: string }[]> {
  const entries = keys.flatMap((key) => {
    const parts = parseKey(key);
    return parts?.suffix === 'expires' ? [{ key, msgId: parts.msgId }] : [];
  });
  const values = await redis.mget(entries.map((e) => e.key));
  return entries.flatMap((entry, i) => {
    const raw = values[i];
    return raw === null || raw === undefined ? [] : [{ ...entry, raw, expiresAt: rubyToI(raw) }];
  });
}

const allKeys = (msgId: string): string[] => KEY_SUFFIXES.map((suffix) => `${msgId}:${suffix}`);

export const dumpExpiriesCommand: CommandSpec = {
  name: 'dump-expiries',
  aliases: ['dump_expiries'],
  summary: 'print every msgid:*:expires key with its value',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Prints "<key>:<value>" for every msgid:*:expires key of each database (Go's dump_expiries; the
input format of Beetle's script/analyze-expiries).`,
  flags: {
    'queue-prefix': {
      type: 'string',
      value: '<prefix>',
      description: 'only messages of queues whose names start with this',
    },
    ...storeToolFlags,
  },
  examples: ['beetle dump-expiries --redis-server 127.0.0.1:6379 > expiries.txt'],
  async run(ctx) {
    const databases = databasesOf(ctx);
    const { count, pauseMs } = scanSettings(ctx, 10_000);
    const match = `msgid:${escapeGlob(stringFlag(ctx.flags, 'queue-prefix') ?? '')}*:expires`;
    await withRestarts(ctx, async (watcher, connect) => {
      for (const db of databases) {
        const redis = await connect(db);
        await scanDatabase(
          ctx,
          redis,
          watcher,
          { match, count, pauseMs, label: `dump db ${db}` },
          async (keys) => {
            for (const entry of await expiries(redis, keys)) ctx.print.out(`${entry.key}:${entry.raw}`);
            await ctx.print.drain();
          },
        );
      }
    });
    return 0;
  },
};

export const deleteKeysCommand: CommandSpec = {
  name: 'delete-keys',
  aliases: ['delete_queue_keys'],
  summary: "delete the dedup keys of a queue's messages expiring before a time",
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Go's delete_queue_keys: for every msgid:<prefix>*:expires key whose value is less than
now + --delete-before seconds, deletes all 8 keys of that message (e.g. to drop the keys of a queue that no
longer exists; a negative value keeps messages that expired less than that long ago).`,
  flags: {
    ...queuePrefixFlag,
    'delete-before': {
      type: 'string',
      value: '<seconds>',
      description: 'delete messages expiring before now + this (seconds or a duration like 24h; required)',
    },
    'dry-run': { type: 'boolean', description: 'count only, delete nothing' },
    ...storeToolFlags,
  },
  examples: ['beetle delete-keys --queue-prefix old_orders --delete-before 86400'],
  async run(ctx) {
    const prefix = requiredPrefix(ctx.flags);
    const before = durationFlag(ctx.flags, 'delete-before');
    if (before === undefined) throw new UsageError('--delete-before is required');
    const databases = databasesOf(ctx);
    const { count, pauseMs } = scanSettings(ctx, 1000);
    const dryRun = ctx.flags['dry-run'] === true;
    const match = `msgid:${escapeGlob(prefix)}*:expires`;
    await withRestarts(ctx, async (watcher, connect) => {
      for (const db of databases) {
        const redis = await connect(db);
        const limit = Math.floor(Date.now() / 1000) + before;
        let seen = 0;
        let deleted = 0;
        await scanDatabase(
          ctx,
          redis,
          watcher,
          { match, count, pauseMs, label: `delete db ${db}` },
          async (keys) => {
            const found = await expiries(redis, keys);
            seen += found.length;
            const doomed = found.filter((e) => e.expiresAt < limit);
            deleted += doomed.length;
            if (!dryRun) await redis.pipeline(doomed.map((e) => ['DEL', ...allKeys(e.msgId)]));
            return `${deleted} deleted`;
          },
        );
        ctx.print.out(
          `db ${db} on ${watcher.master}: ${deleted} of ${seen} messages of queues "${prefix}*" ` +
            `${dryRun ? 'would be' : 'were'} deleted (expiring before ${new Date(limit * 1000).toISOString()})`,
        );
      }
    });
    return 0;
  },
};

export const copyKeysCommand: CommandSpec = {
  name: 'copy-keys',
  aliases: ['copy_queue_keys'],
  summary: "copy the dedup keys of a queue's messages to another Redis",
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Go's copy_queue_keys: for every msgid:<prefix>*:expires key whose value is at least
now + --copy-after seconds, reads the 8 keys of that message (MGET) and writes the existing ones to
--target-redis (MSET, same database; TTLs are not copied), e.g. to move a queue's consumers to another
dedup store without handling its messages twice.`,
  flags: {
    ...queuePrefixFlag,
    'copy-after': {
      type: 'string',
      value: '<seconds>',
      description: 'copy messages expiring at or after now + this (seconds or a duration; default 0)',
    },
    'target-redis': { type: 'string', value: '<host:port>', description: 'where to copy to (required)' },
    'target-db': {
      type: 'string',
      value: '<n>',
      description: 'database on the target (default: the same as the source, as in Go)',
    },
    'target-password': { type: 'string', value: '<password>', description: 'AUTH password of the target' },
    ...storeToolFlags,
  },
  examples: ['beetle copy-keys --queue-prefix orders --target-redis redis2:6379 --copy-after 0'],
  async run(ctx) {
    const prefix = requiredPrefix(ctx.flags);
    const after = durationFlag(ctx.flags, 'copy-after') ?? 0;
    const target = stringFlag(ctx.flags, 'target-redis');
    if (target === undefined || !isRedisAddress(target)) {
      throw new UsageError('--target-redis host:port is required');
    }
    const databases = databasesOf(ctx);
    const targetDb = numberFlag(ctx.flags, 'target-db', { integer: true, min: 0 });
    if (targetDb !== undefined && databases.length > 1) {
      throw new UsageError('--target-db needs exactly one source database (--databases)');
    }
    const { count, pauseMs } = scanSettings(ctx, 1000);
    const match = `msgid:${escapeGlob(prefix)}*:expires`;
    await withRestarts(ctx, async (watcher, connect) => {
      for (const db of databases) {
        const redis = await connect(db);
        const destinationDb = targetDb ?? db;
        if (target === watcher.master && destinationDb === db) {
          throw new UsageError(`--target-redis ${target} db ${db} is the source itself`);
        }
        const destination = await RespClient.connect(target, {
          db: destinationDb,
          password: stringFlag(ctx.flags, 'target-password'),
          connectTimeoutMs: ctx.config.redisConnectTimeout * 1000,
        });
        try {
          const limit = Math.floor(Date.now() / 1000) + after;
          let messages = 0;
          let written = 0;
          await scanDatabase(
            ctx,
            redis,
            watcher,
            { match, count, pauseMs, label: `copy db ${db}` },
            async (keys) => {
              const wanted = (await expiries(redis, keys)).filter((e) => e.expiresAt >= limit);
              const fetched = await redis.pipeline(wanted.map((e) => ['MGET', ...allKeys(e.msgId)]));
              const commands: RespArg[][] = [];
              wanted.forEach((entry, i) => {
                const values = fetched[i];
                if (!Array.isArray(values)) throw new Error(`MGET of ${entry.msgId} failed`);
                const pairs: RespArg[] = [];
                allKeys(entry.msgId).forEach((name, j) => {
                  const value = values[j];
                  if (Buffer.isBuffer(value)) pairs.push(name, value);
                });
                if (pairs.length === 0) return;
                commands.push(['MSET', ...pairs]);
                messages++;
                written += pairs.length / 2;
              });
              const replies = await destination.pipeline(commands);
              const failed = replies.find((r) => r instanceof Error);
              if (failed instanceof Error) throw failed;
              return `${messages} copied`;
            },
          );
          ctx.print.out(
            `db ${db}: copied ${messages} messages (${written} keys) of queues "${prefix}*" from ${watcher.master} ` +
              `to ${target} db ${destinationDb}`,
          );
        } finally {
          destination.close();
        }
      }
    });
    return 0;
  },
};
