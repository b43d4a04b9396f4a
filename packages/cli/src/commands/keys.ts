import { createReadStream } from 'node:fs';
import { escapeGlob, isRedisAddress, RedisMaintenanceClient } from '@beetle/dedup-redis';
import type { CommandContext, CommandSpec } from '../command.js';
import {
  booleanFlag,
  databasesFlag,
  durationFlag,
  numberFlag,
  stringFlag,
  UsageError,
  type FlagValues,
} from '../options.js';
import { scanDatabase, scanSettings, storeToolFlags, withRestarts } from './scan.js';

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
            for (const entry of await redis.expiries(keys)) ctx.print.out(`${entry.key}:${entry.raw}`);
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
            const found = await redis.expiries(keys);
            seen += found.length;
            const doomed = found.filter((e) => e.expiresAt < limit);
            deleted += doomed.length;
            if (!dryRun) await redis.deleteMessages(doomed.map((e) => e.msgId));
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

/** Environment variable with the AUTH password of `copy-keys`' target (not in the process list, unlike a flag). */
export const TARGET_PASSWORD_ENV = 'BEETLE_TARGET_REDIS_PASSWORD';

/** Bound for a password read from a file or stdin. */
const MAX_PASSWORD_BYTES = 64 * 1024;

/** The content of `source` without one trailing newline (`echo pw > file`, `printf pw |` both work). */
async function readPassword(source: AsyncIterable<Buffer | string>, label: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of source) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += bytes.length;
    if (size > MAX_PASSWORD_BYTES)
      throw new UsageError(`${label} is longer than ${MAX_PASSWORD_BYTES} bytes`);
    chunks.push(bytes);
  }
  const password = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (password === '') throw new UsageError(`${label} is empty`);
  return password;
}

/**
 * The target's password: `--target-password-file <file|->`, else the deprecated `--target-password` (with a
 * warning: the process list shows it to every user of the machine), else `BEETLE_TARGET_REDIS_PASSWORD`.
 */
async function targetPassword(ctx: CommandContext): Promise<string | undefined> {
  const flag = stringFlag(ctx.flags, 'target-password');
  const file = stringFlag(ctx.flags, 'target-password-file');
  if (flag !== undefined && file !== undefined) {
    throw new UsageError('give either --target-password-file or --target-password, not both');
  }
  if (file !== undefined) {
    const label = file === '-' ? 'the target password on stdin' : `--target-password-file ${file}`;
    try {
      return await readPassword(file === '-' ? ctx.io.stdin : createReadStream(file), label);
    } catch (error) {
      if (error instanceof UsageError) throw error;
      throw new UsageError(`cannot read ${label}: ${(error as Error).message}`, { cause: error });
    }
  }
  if (flag !== undefined) {
    ctx.print.err(
      `beetle: --target-password is deprecated: every user of this machine can read it in the process list; ` +
        `set ${TARGET_PASSWORD_ENV} or use --target-password-file instead`,
    );
    return flag;
  }
  const env = ctx.io.env[TARGET_PASSWORD_ENV];
  return env === undefined || env === '' ? undefined : env;
}

export const copyKeysCommand: CommandSpec = {
  name: 'copy-keys',
  aliases: ['copy_queue_keys'],
  summary: "copy the dedup keys of a queue's messages to another Redis",
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Go's copy_queue_keys: for every msgid:<prefix>*:expires key whose value is at least
now + --copy-after seconds, copies the existing ones of the 8 keys of that message to --target-redis (same
database unless --target-db), e.g. to move a queue's consumers to another dedup store without handling its
messages twice. Unlike Go, keys with a TTL keep it (PTTL on the source, SET PX on the target).
The target's password comes from --target-password-file (a file, or - for stdin) or the environment variable
${TARGET_PASSWORD_ENV}; --target-password is deprecated (the process list shows it). The target uses TLS
as redis_tls says unless --target-tls says otherwise. Copying onto the source itself (the same server and
database under any name) is refused.`,
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
    'target-password-file': {
      type: 'string',
      value: '<file|->',
      description: `file with the target's AUTH password, - for stdin (or env ${TARGET_PASSWORD_ENV})`,
    },
    'target-password': {
      type: 'string',
      value: '<password>',
      description: `deprecated (visible in the process list): use ${TARGET_PASSWORD_ENV} or --target-password-file`,
    },
    'target-tls': {
      type: 'string',
      value: '<true|false>',
      description: 'connect to the target with TLS (default: redis_tls)',
    },
    ...storeToolFlags,
  },
  examples: [
    'beetle copy-keys --queue-prefix orders --target-redis redis2:6379 --copy-after 0',
    `${TARGET_PASSWORD_ENV}=... beetle copy-keys --queue-prefix orders --target-redis redis2:6379`,
  ],
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
    const targetTls = booleanFlag(ctx.flags, 'target-tls') ?? ctx.config.redisTls;
    const password = await targetPassword(ctx);
    const { count, pauseMs } = scanSettings(ctx, 1000);
    const match = `msgid:${escapeGlob(prefix)}*:expires`;
    await withRestarts(ctx, async (watcher, connect) => {
      for (const db of databases) {
        const redis = await connect(db);
        const destinationDb = targetDb ?? db;
        // The target's own password (none unless given), not the source's redis_password.
        const destination = await RedisMaintenanceClient.open(ctx.config, target, destinationDb, {
          password,
          tls: targetTls,
          env: ctx.io.env,
        });
        try {
          if (await destination.sameKeyspaceAs(redis)) {
            throw new UsageError(
              `--target-redis ${target} db ${destinationDb} is the source itself (${watcher.master} db ${db}: ` +
                'a probe key written to the target showed up on the source)',
            );
          }
          const limit = Math.floor(Date.now() / 1000) + after;
          let messages = 0;
          let written = 0;
          let withTtl = 0;
          await scanDatabase(
            ctx,
            redis,
            watcher,
            { match, count, pauseMs, label: `copy db ${db}` },
            async (keys) => {
              const wanted = (await redis.expiries(keys)).filter((e) => e.expiresAt >= limit);
              const copied = await redis.copyMessages(
                destination,
                wanted.map((e) => e.msgId),
              );
              messages += copied.messages;
              written += copied.keys;
              withTtl += copied.withTtl;
              return `${messages} copied`;
            },
          );
          ctx.print.out(
            `db ${db}: copied ${messages} messages (${written} keys) of queues "${prefix}*" from ${watcher.master} ` +
              `to ${target} db ${destinationDb}${targetTls ? ' (TLS)' : ''}; ${withTtl} keys with their TTL`,
          );
        } finally {
          destination.close();
        }
      }
    });
    return 0;
  },
};
