/**
 * The nemesis: injects faults one after the other while messages flow. Every choice (fault, target, duration,
 * gap) comes from the seeded PRNG, so a run's fault sequence is replayable from its seed.
 */
import type { Cluster } from './cluster.js';
import type { Prng } from './prng.js';

/** The faults `mixed` picks from (with `--redis sentinel`, `sentinel-failover` in place of `redis-promote`). */
export const FAULTS = [
  'kill-broker',
  'n-1-down',
  'redis-stop',
  'redis-promote',
  'consumer-kill',
  'broker-pause',
] as const;

/** Every fault, those that need Sentinels (`--redis sentinel`) included. */
export const ALL_FAULTS = [...FAULTS, 'sentinel-failover'] as const;

export type FaultKind = (typeof ALL_FAULTS)[number];

export function isFault(name: string): name is FaultKind {
  return (ALL_FAULTS as readonly string[]).includes(name);
}

/** Where the consumers find the Redis master: the master file, or the Sentinels. */
export type RedisMode = 'file' | 'sentinel';

/** The `mixed` pool of a mode (same length and order: a seed draws the same steps, Redis's own differ). */
export const mixedFaults = (redis: RedisMode): readonly FaultKind[] =>
  redis === 'sentinel' ? FAULTS.map((f) => (f === 'redis-promote' ? 'sentinel-failover' : f)) : FAULTS;

/** One planned fault. */
export interface FaultStep {
  readonly n: number;
  readonly kind: FaultKind;
  /** Seconds to wait before injecting it. */
  readonly gap: number;
  /** Brokers (index) or consumer (index) it targets. */
  readonly targets: readonly number[];
  /** Seconds the fault lasts (down/paused time) before healing starts. */
  readonly seconds: number;
}

/** A fault as it happened. */
export interface ExecutedFault extends FaultStep {
  /** Seconds since the start of publishing. */
  readonly startedAt: number;
  readonly endedAt: number;
  readonly description: string;
}

export interface PlanOptions {
  /** Faults to cycle through in order, or `mixed` for a random choice at every step. */
  readonly faults: readonly FaultKind[] | 'mixed';
  readonly brokers: number;
  readonly consumers: number;
  /** Default `file`. */
  readonly redis?: RedisMode;
}

const round = (x: number): number => Math.round(x * 10) / 10;

/** The `n`-th step (0-based); draws from `prng` in a fixed order. */
export function planStep(prng: Prng, n: number, options: PlanOptions): FaultStep {
  const kind =
    options.faults === 'mixed'
      ? prng.pick(mixedFaults(options.redis ?? 'file'))
      : (options.faults[n % options.faults.length] as FaultKind);
  const gap = round(n === 0 ? prng.float(2, 4) : prng.float(1, 5));
  const brokerIndexes = Array.from({ length: options.brokers }, (_, i) => i);
  switch (kind) {
    case 'kill-broker':
      return { n, kind, gap, targets: [prng.int(0, options.brokers - 1)], seconds: round(prng.float(1, 5)) };
    case 'n-1-down':
      return {
        n,
        kind,
        gap,
        targets: prng.sample(brokerIndexes, options.brokers - 1),
        seconds: round(prng.float(2, 6)),
      };
    case 'redis-stop':
      return { n, kind, gap, targets: [], seconds: round(prng.float(2, 6)) };
    case 'redis-promote':
    case 'sentinel-failover':
      return { n, kind, gap, targets: [], seconds: round(prng.float(2, 5)) };
    case 'consumer-kill':
      return { n, kind, gap, targets: [prng.int(0, options.consumers - 1)], seconds: 0 };
    case 'broker-pause':
      return { n, kind, gap, targets: [prng.int(0, options.brokers - 1)], seconds: round(prng.float(3, 8)) };
  }
}

/** What the nemesis needs from the harness. */
export interface NemesisContext {
  readonly cluster: Cluster;
  /** Arms consumer `index`, SIGKILLs it inside a handler and starts a replacement; describes what happened. */
  readonly killConsumerMidHandler: (index: number) => Promise<string>;
  readonly log: (line: string) => void;
  /** Seconds since the start of publishing. */
  readonly elapsed: () => number;
  readonly sleep: (ms: number) => Promise<void>;
}

export function describeStep(step: FaultStep, cluster: Cluster): string {
  const broker = (i: number): string => cluster.brokers[i]?.address ?? `broker#${i}`;
  switch (step.kind) {
    case 'kill-broker':
      return `kill -9 broker ${broker(step.targets[0] ?? 0)}, restart after ${step.seconds}s`;
    case 'n-1-down':
      return `stop brokers ${step.targets.map(broker).join(' + ')}, start again after ${step.seconds}s`;
    case 'redis-stop':
      return `SIGSTOP redis master for ${step.seconds}s`;
    case 'redis-promote':
      return `kill -9 redis master, promote the replica, old master back as replica after ${step.seconds}s`;
    case 'sentinel-failover':
      return `kill -9 redis master, the Sentinels promote the replica, old master back as replica ${step.seconds}s later`;
    case 'consumer-kill':
      return `SIGKILL consumer #${step.targets[0] ?? 0} inside a handler, start a replacement`;
    case 'broker-pause':
      return `SIGSTOP broker ${broker(step.targets[0] ?? 0)} for ${step.seconds}s`;
  }
}

/** Runs one fault to its end (healed). */
export async function inject(step: FaultStep, ctx: NemesisContext): Promise<string> {
  const { cluster } = ctx;
  const wait = (): Promise<void> => ctx.sleep(step.seconds * 1000);
  const brokers = step.targets.map((i) => {
    const broker = cluster.brokers[i];
    if (broker === undefined) throw new Error(`no broker #${i}`);
    return broker;
  });
  switch (step.kind) {
    case 'kill-broker': {
      const [broker] = brokers;
      if (broker === undefined) throw new Error('kill-broker without a target');
      if (cluster.brokers.some((b) => b.state !== 'up'))
        throw new Error('kill-broker while a broker is down');
      await broker.handle.kill();
      broker.state = 'down';
      ctx.log(`  ${broker.address} killed`);
      await wait();
      await broker.handle.start();
      broker.state = 'up';
      ctx.log(`  ${broker.address} restarted`);
      return describeStep(step, cluster);
    }
    case 'n-1-down': {
      await Promise.all(
        brokers.map(async (broker) => {
          await broker.handle.stop();
          broker.state = 'down';
        }),
      );
      ctx.log(`  ${brokers.map((b) => b.address).join(' + ')} stopped`);
      await wait();
      await Promise.all(
        brokers.map(async (broker) => {
          await broker.handle.start();
          broker.state = 'up';
        }),
      );
      ctx.log(`  ${brokers.map((b) => b.address).join(' + ')} started`);
      return describeStep(step, cluster);
    }
    case 'redis-stop': {
      const master = cluster.master;
      await master.pause();
      ctx.log(`  redis ${master.address} stopped (SIGSTOP)`);
      try {
        await wait();
      } finally {
        await master.resume();
      }
      ctx.log(`  redis ${master.address} resumed`);
      return describeStep(step, cluster);
    }
    case 'redis-promote':
      await cluster.promoteReplica(step.seconds, (ms) => ctx.sleep(ms));
      return describeStep(step, cluster);
    case 'sentinel-failover':
      await cluster.sentinelFailover(step.seconds, (ms) => ctx.sleep(ms));
      return describeStep(step, cluster);
    case 'consumer-kill':
      return ctx.killConsumerMidHandler(step.targets[0] ?? 0);
    case 'broker-pause': {
      const [broker] = brokers;
      if (broker === undefined) throw new Error('broker-pause without a target');
      await broker.handle.pause();
      broker.state = 'paused';
      ctx.log(`  ${broker.address} paused (SIGSTOP)`);
      try {
        await wait();
      } finally {
        await broker.handle.resume();
        broker.state = 'up';
      }
      ctx.log(`  ${broker.address} resumed`);
      return describeStep(step, cluster);
    }
  }
}

/**
 * Injects faults until `active()` turns false (checked before each fault; a fault in progress is always taken
 * to its end) or `maxFaults` were injected. Returns what happened.
 */
export async function runNemesis(
  prng: Prng,
  options: PlanOptions & { readonly maxFaults?: number },
  ctx: NemesisContext,
  active: () => boolean,
): Promise<ExecutedFault[]> {
  const executed: ExecutedFault[] = [];
  if (options.faults !== 'mixed' && options.faults.length === 0) return executed;
  for (let n = 0; options.maxFaults === undefined || n < options.maxFaults; n++) {
    const step = planStep(prng, n, options);
    const gapEnd = Date.now() + step.gap * 1000;
    while (Date.now() < gapEnd && active()) await ctx.sleep(Math.min(200, gapEnd - Date.now()));
    if (!active()) break;
    const startedAt = ctx.elapsed();
    ctx.log(`fault #${n + 1} at ${startedAt.toFixed(1)}s: ${describeStep(step, ctx.cluster)}`);
    const description = await inject(step, ctx);
    const endedAt = ctx.elapsed();
    ctx.log(`fault #${n + 1} healed at ${endedAt.toFixed(1)}s`);
    executed.push({ ...step, startedAt: round(startedAt), endedAt: round(endedAt), description });
  }
  return executed;
}
