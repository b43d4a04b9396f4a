import { readFile, stat } from 'node:fs/promises';
import { NoRedisMasterError } from '@beetle/core';
import { errorMessage } from '@beetle/core/kit';
import { isRedisAddress } from './address.js';
import { MasterChangedError, RedisUnavailableError } from './errors.js';
import { askSentinels, sentinelTarget, type SentinelTarget } from './sentinel.js';

export { isRedisAddress, parseRedisAddress, REDIS_ADDRESS_PATTERN } from './address.js';

/**
 * The master of `systemName` named by the content of a Redis master file (Ruby `extract_redis_master`,
 * reference §4.8): either one legacy line `host:port`, or `system_name/host:port` lines (an invalidated system
 * is written as `name/`). A line without `/` applies whatever the system name; the last matching line wins;
 * lines are trimmed. Returns `undefined` when no master is named (blank file, no matching line, empty entry).
 */
export function parseRedisMasterFile(content: string, systemName: string): string | undefined {
  let master: string | undefined;
  for (const rawLine of content.split('\n')) {
    const line = rawLine.trim();
    if (line === '') continue;
    const slash = line.indexOf('/');
    if (slash === -1) {
      master = line;
    } else if (line.slice(0, slash).trim() === systemName) {
      master = line.slice(slash + 1).trim();
    }
  }
  return master === '' ? undefined : master;
}

/**
 * Where the Redis master is found: `redisServer` is `host:port`, the path of a master file, or a
 * `sentinel://` URL; or `redisSentinels` name the Sentinels that know it (they win over `redisServer`).
 */
export interface RedisMasterSettings {
  readonly redisServer: string;
  /** Which line of the master file applies. */
  readonly systemName: string;
  readonly redisSentinels?: string | readonly string[] | undefined;
  readonly redisSentinelMasterName?: string | undefined;
  readonly redisSentinelPassword?: string | undefined;
  /** Seconds to connect to a Sentinel. Default 5. */
  readonly redisConnectTimeout?: number;
  /** Seconds a Sentinel may take to answer. Default 5. */
  readonly redisReadTimeout?: number;
}

const askSentinelsOf = (target: SentinelTarget, settings: RedisMasterSettings): Promise<string> =>
  askSentinels(target, {
    connectTimeoutMs: (settings.redisConnectTimeout ?? 5) * 1000,
    commandTimeoutMs: (settings.redisReadTimeout ?? 5) * 1000,
  });

/**
 * The current master, read once: `redisServer` itself when it is `host:port`, the master the Sentinels name,
 * else the line of the master file for `systemName`. Rejects with `NoRedisMasterError` when there is none
 * (the maintenance tools).
 */
export async function resolveRedisMaster(settings: RedisMasterSettings): Promise<string> {
  const sentinel = sentinelTarget(settings);
  if (sentinel !== undefined) return askSentinelsOf(sentinel, settings);
  const server = settings.redisServer.trim();
  if (isRedisAddress(server)) return server;
  let content: string;
  try {
    content = await readFile(server, 'utf8');
  } catch (error) {
    throw new NoRedisMasterError(`cannot read the Redis master file ${server}: ${errorMessage(error)}`, {
      cause: error,
    });
  }
  const master = parseRedisMasterFile(content, settings.systemName);
  if (master === undefined || !isRedisAddress(master)) {
    throw new NoRedisMasterError(
      `the Redis master file ${server} names no valid master for system ${JSON.stringify(settings.systemName)}`,
    );
  }
  return master;
}

/**
 * Follows a Redis master file: looks at it at most once per `checkIntervalMs` (at once after `lookSoon`),
 * reads it again only when it changed, and reports a new master (or none: `undefined`) to `onChange`. What
 * to do about a change (reconnect, start over) is the caller's business.
 */
export class MasterFile {
  /** The master the file named at the last look (`undefined`: none, or not looked at yet). */
  private named: string | undefined;
  /** Why the file names no usable master right now, while that lasts. */
  private problem: RedisUnavailableError | undefined;
  private signature: string | undefined;
  private lastCheck = Number.NEGATIVE_INFINITY;
  private checking: Promise<void> | undefined;

  constructor(
    readonly path: string,
    private readonly systemName: string,
    private readonly checkIntervalMs: number,
    private readonly onChange: (master: string | undefined) => void = () => undefined,
  ) {}

  /** The master the file named at the last look. */
  get master(): string | undefined {
    return this.named;
  }

  /** Whether a caller must look (`refresh`) before using the master: a look is due, or there is none. */
  mustLook(now: number): boolean {
    return this.problem !== undefined || now - this.lastCheck >= this.checkIntervalMs;
  }

  /** The next `refresh` looks at the file whatever the interval (after a failure). */
  lookSoon(): void {
    this.lastCheck = Number.NEGATIVE_INFINITY;
  }

  /** Looks at the file if a look is due (one look at a time); rejects while it names no usable master. */
  async refresh(): Promise<void> {
    if (Date.now() - this.lastCheck >= this.checkIntervalMs) {
      this.checking ??= this.check().finally(() => {
        this.checking = undefined;
      });
      await this.checking;
    }
    if (this.problem) throw this.problem;
  }

  private async check(): Promise<void> {
    const { path } = this;
    this.lastCheck = Date.now();
    let content: string;
    try {
      const stats = await stat(path);
      // Size is part of the signature: the Go daemons truncate, then write, possibly within one mtime tick.
      const signature = `${stats.mtimeMs}:${stats.size}:${stats.ino}`;
      if (signature === this.signature) return;
      content = await readFile(path, 'utf8');
      this.signature = signature;
    } catch (error) {
      this.signature = undefined;
      this.problem = new RedisUnavailableError(
        `cannot read the Redis master file ${path}: ${errorMessage(error)}`,
        { cause: error },
      );
      this.report(undefined);
      return;
    }
    const master = parseRedisMasterFile(content, this.systemName);
    if (master === undefined) {
      this.problem = new RedisUnavailableError(
        `the Redis master file ${path} names no master for system ${JSON.stringify(this.systemName)}`,
      );
    } else if (!isRedisAddress(master)) {
      this.problem = new RedisUnavailableError(
        `the Redis master file ${path} names an invalid master ${JSON.stringify(master)}`,
      );
    } else {
      this.problem = undefined;
    }
    this.report(this.problem ? undefined : master);
  }

  private report(master: string | undefined): void {
    if (master === this.named) return;
    this.named = master;
    this.onChange(master);
  }
}

/** How often a maintenance run asks the Sentinels whether the master is still the same (ms). */
const SENTINEL_CHECK_INTERVAL_MS = 1000;

/**
 * The master a maintenance run works on, and whether the master file (if `redisServer` is one) or the
 * Sentinels still name it: looked at or asked at most once per second; a file that cannot be read or names
 * none, or Sentinels that do not answer, are ignored (the run keeps going where it is).
 */
export class MasterWatcher {
  private lastAsked = Date.now();

  private constructor(
    private readonly file: MasterFile | undefined,
    private readonly sentinels: (() => Promise<string>) | undefined,
    /** `host:port` of the master. */
    public master: string,
  ) {}

  static async create(settings: RedisMasterSettings): Promise<MasterWatcher> {
    const sentinel = sentinelTarget(settings);
    if (sentinel !== undefined) {
      const ask = (): Promise<string> => askSentinelsOf(sentinel, settings);
      return new MasterWatcher(undefined, ask, await ask());
    }
    const master = await resolveRedisMaster(settings);
    const server = settings.redisServer.trim();
    const file = isRedisAddress(server) ? undefined : new MasterFile(server, settings.systemName, 1000);
    return new MasterWatcher(file, undefined, master);
  }

  /** Rejects with `MasterChangedError` when the file (or the Sentinels) name another master now. */
  async check(): Promise<void> {
    let named: string | undefined;
    if (this.sentinels !== undefined) {
      if (Date.now() - this.lastAsked < SENTINEL_CHECK_INTERVAL_MS) return;
      this.lastAsked = Date.now();
      named = await this.sentinels().catch(() => undefined);
    } else {
      if (this.file === undefined) return;
      await this.file.refresh().catch(() => undefined);
      named = this.file.master;
    }
    if (named !== undefined && named !== this.master) {
      const old = this.master;
      this.master = named;
      throw new MasterChangedError(`the Redis master changed from ${old} to ${named}`);
    }
  }
}
