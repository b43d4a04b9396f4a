import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { main } from '../src/index.js';
import { RedisMaintenanceClient as RespClient } from '@beetle/dedup-redis';

import { management, servers as allServers } from '../../broker-amqp/test/helpers.js';

export { management };

/** The first two shared brokers (global setup fails the run when they are missing; nothing is skipped). */
export const servers = allServers.slice(0, 2);

export const redisServer = process.env.BEETLE_TEST_REDIS ?? '127.0.0.1:6379';

export const uid = (): string => randomBytes(4).toString('hex');

/** Flags pointing a command at the test services (short timeouts). */
export const serviceFlags = (redisDb: number): string[] => [
  '--servers',
  servers.join(','),
  '--redis-server',
  redisServer,
  '--redis-db',
  String(redisDb),
  '--set',
  'publisher_connect_timeout=3',
  '--set',
  'subscriber_reconnect_delay=1',
  '--set',
  'stop_timeout=5',
];

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  stdin?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  isTTY?: boolean;
  /** Called with everything written to stderr so far, after each write. */
  onStderr?: (text: string) => void;
}

/** Runs `beetle <argv>` in-process with captured output. */
export async function run(argv: string[], options: RunOptions = {}): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main(argv, {
    stdout: {
      write: (chunk: string) => {
        stdout += chunk;
        return true;
      },
    },
    stderr: {
      write: (chunk: string) => {
        stderr += chunk;
        options.onStderr?.(stderr);
        return true;
      },
    },
    stdin: Readable.from(options.stdin === undefined ? [] : [Buffer.from(options.stdin)]),
    env: options.env ?? {},
    isTTY: options.isTTY ?? false,
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  return { code, stdout, stderr };
}

/**
 * Starts a long-running command and resolves its `ready` once stderr contains `marker` (e.g. "listening").
 */
export function start(
  argv: string[],
  marker: string,
  options: RunOptions = {},
): { ready: Promise<void>; done: Promise<CliRun> } {
  let signalReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    signalReady = resolve;
  });
  const done = run(argv, {
    ...options,
    onStderr: (text) => {
      if (text.includes(marker)) signalReady();
    },
  });
  // A command that fails before it is ready must not leave the test waiting for `ready`.
  void done.then(() => signalReady());
  return { ready, done };
}

export const lines = (text: string): string[] => text.split('\n').filter((line) => line !== '');

/** A temporary file with `content`. */
export function tempFile(name: string, content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'beetle-cli-'));
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** A raw client on `db` of the test Redis. */
export const redis = (db: number): Promise<RespClient> => RespClient.connect(redisServer, { db });

/** Deletes queues, exchanges and policies on every test broker (404s ignored). */
export async function cleanup(what: {
  queues?: string[];
  exchanges?: string[];
  policies?: string[];
}): Promise<void> {
  await Promise.all(
    servers.flatMap((server) => [
      ...(what.queues ?? []).map((q) =>
        management(server, 'DELETE', `/api/queues/%2F/${encodeURIComponent(q)}`),
      ),
      ...(what.exchanges ?? []).map((e) =>
        management(server, 'DELETE', `/api/exchanges/%2F/${encodeURIComponent(e)}`),
      ),
      ...(what.policies ?? []).map((p) =>
        management(server, 'DELETE', `/api/policies/%2F/${encodeURIComponent(p)}`),
      ),
    ]),
  );
}
