/** What a chaos run is asked to do (`ChaosOptions`), what it reports (`ChaosResult`), and the checks of the options. */
import type { Verdict } from './checker.js';
import type { Cluster, ClusterPorts } from './cluster.js';
import { ALL_FAULTS, type ExecutedFault, type FaultKind, type RedisMode } from './nemesis.js';

export interface ChaosOptions {
  /** Redundant messages to publish in total. */
  readonly messages: number;
  /** Seconds of the publishing phase (faults are injected during it). */
  readonly duration: number;
  readonly seed: number;
  readonly publishers: number;
  readonly consumers: number;
  /** Faults cycled through in order, or `mixed` (random choice each time). */
  readonly faults: readonly FaultKind[] | 'mixed';
  /** Stop injecting after this many faults (default: as many as fit in the publishing phase). */
  readonly maxFaults?: number;
  /** Seconds the drain phase may last at most (default 90). */
  readonly drainTimeout?: number;
  /** Seconds without new completions that end the drain once every confirmed message completed (default 3). */
  readonly settle?: number;
  /** Ports of the run's own services (default 5690-5692, 6397/6398). Ignored with `cluster`. */
  readonly ports?: ClusterPorts;
  /** Services to reuse (left running, healed and cleaned); otherwise the run starts and stops its own. */
  readonly cluster?: Cluster;
  /**
   * Handler settings (defaults: attempts 3, timeout 3 s, delay 1 s, concurrency 1, prefetch 5); `default`:
   * the library's own (`prefetchCount` 100, `subscriberConcurrency` following it).
   */
  readonly attempts?: number;
  readonly handlerTimeout?: number;
  readonly handlerDelay?: number;
  readonly concurrency?: number | 'default';
  readonly prefetch?: number | 'default';
  /**
   * Where consumers find the Redis master: `file` (the master file, `redis-promote` rewrites it) or
   * `sentinel` (three Sentinels, `sentinel://`, `redisWaitReplicas` 1). Default `sentinel` when the faults name
   * `sentinel-failover`, else `file`. Ignored with `cluster` (its own Sentinels decide).
   */
  readonly redis?: RedisMode;
  /** Consumers' `redisStatusKeyExpiryInterval` (default 0, Ruby's default). */
  readonly statusKeyExpiry?: number;
  /** Consumers' `redisCompletedStatusTtl` (default 600, Beetle's default; 0 = Ruby's behaviour). */
  readonly completedStatusTtl?: number;
  /** Handler run time range, ms (default 1-10). */
  readonly workMs?: readonly [number, number];
  /** Publishes in flight per publisher (default 20). */
  readonly window?: number;
  /** Leave the run's own services running at the end (a later run on the same ports reuses them). */
  readonly keepServices?: boolean;
  /** SIGKILL the run's own brokers at the end instead of stopping them gracefully (faster; for tests). */
  readonly killServicesAtEnd?: boolean;
  /** Keep the run directory (records, worker logs) even when the run passed. */
  readonly keepDir?: boolean;
  /** Progress lines (default: stderr). */
  readonly log?: (line: string) => void;
  /** Aborts the run (services and workers are still cleaned up). */
  readonly signal?: AbortSignal;
}

export interface ChaosResult extends Verdict {
  readonly seed: number;
  readonly settings: {
    readonly messages: number;
    readonly duration: number;
    readonly publishers: number;
    readonly consumers: number;
    readonly faults: string;
    /** The consumers' prefetch and handlers at once (`default`: the library's). */
    readonly prefetch: number | 'default';
    readonly concurrency: number | 'default';
    readonly servers: readonly string[];
    readonly queue: string;
  };
  readonly faultsInjected: ExecutedFault[];
  /** Consumer processes that died without being killed by the nemesis. */
  readonly crashes: string[];
  /** Confirmed publishes per second of the publishing phase. */
  readonly publishRate: number;
  /** Distinct messages completed per second, from the first publish to the last first completion. */
  readonly consumeRate: number;
  /** Whether every confirmed message completed before the drain deadline. */
  readonly drained: boolean;
  readonly seconds: {
    readonly setup: number;
    readonly publishing: number;
    readonly drain: number;
    readonly total: number;
  };
  /** The run directory when kept (failed runs keep it). */
  readonly runDir: string | undefined;
  /** lost == duplicated == unexpected == 0 and no consumer crashed. */
  readonly ok: boolean;
}

export function validate(options: ChaosOptions): void {
  const positiveInt = (name: string, value: number): void => {
    if (!Number.isInteger(value) || value < 1) throw new Error(`chaos: ${name} must be a positive integer`);
  };
  positiveInt('messages', options.messages);
  positiveInt('publishers', options.publishers);
  positiveInt('consumers', options.consumers);
  if (!(options.duration > 0)) throw new Error('chaos: duration must be positive');
  if (options.faults !== 'mixed') {
    for (const fault of options.faults) {
      if (!(ALL_FAULTS as readonly string[]).includes(fault))
        throw new Error(`chaos: unknown fault ${fault}`);
    }
    const sentinel = redisMode(options) === 'sentinel';
    // Two authorities over one pair would fight: the master file's administrator and the Sentinels.
    if (sentinel && options.faults.includes('redis-promote'))
      throw new Error(
        'chaos: redis-promote rewrites the master file; with --redis sentinel use sentinel-failover',
      );
    if (!sentinel && options.faults.includes('sentinel-failover'))
      throw new Error('chaos: sentinel-failover needs --redis sentinel');
  }
}

/** The run's Redis mode: given, or `sentinel` when the faults name `sentinel-failover`. */
export function redisMode(options: Pick<ChaosOptions, 'redis' | 'faults'>): RedisMode {
  if (options.redis !== undefined) return options.redis;
  return options.faults !== 'mixed' && options.faults.includes('sentinel-failover') ? 'sentinel' : 'file';
}
