/**
 * What `redisWaitReplicas: 1` (a Redis `WAIT 1` after the claim, mutex, completion and failure writes) costs
 * per redundant message, on a private master and replica (`startRedis`, ports from `BEETLE_BENCH_WAIT_PORT`,
 * default 18320/18321): the store's happy path of both copies (claim, complete, acknowledged; claim,
 * acknowledged), `--concurrency` messages in flight, alternating `waitReplicas` 0 and 1 for `--rounds`
 * rounds (median). Run on its own (not part of `pnpm bench`):
 *
 *   pnpm turbo run build --filter @beetle/dedup-redis && \
 *     TSX_TSCONFIG_PATH=bench/tsconfig.json npx tsx bench/src/redis-wait.ts --messages 5000 --rounds 5
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { startRedis } from '@beetle/test-services';

const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '5000' },
    rounds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '200' },
  },
});
const MESSAGES = Number(values.messages);
const ROUNDS = Number(values.rounds);
const CONCURRENCY = Number(values.concurrency);
const PORT = Number(process.env.BEETLE_BENCH_WAIT_PORT ?? 18320);

interface Run {
  readonly rate: number;
  readonly p50: number;
  readonly p99: number;
}

const quantile = (sorted: readonly number[], q: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;

async function run(
  address: string,
  waitReplicas: number,
  messages: number,
  concurrency: number,
): Promise<Run> {
  const store = new RedisDedupStore({ redisServer: address, waitReplicas, waitTimeout: 1, db: 5 });
  await store.ping();
  const now = Math.floor(Date.now() / 1000);
  const params = { expiresAt: now + 600, timeoutAt: now + 600 };
  const latencies: number[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < messages) {
      next++;
      const ref = { queue: 'bench-wait', uuid: randomUUID() };
      const started = performance.now();
      await store.claim(ref, params);
      await store.complete(ref);
      await store.acknowledged(ref, { redundant: true });
      const second = await store.claim(ref, params);
      if (second.first) throw new Error('the second copy found no claim');
      await store.acknowledged(ref, { redundant: true });
      latencies.push(performance.now() - started);
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  await store.close();
  latencies.sort((a, b) => a - b);
  return {
    rate: Math.round(messages / seconds),
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
  };
}

const median = (xs: readonly number[]): number =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const ms = (x: number): string => `${x.toFixed(2)} ms`;

const master = await startRedis(PORT);
const replica = await startRedis(PORT + 1, { replicaOf: master.address });
try {
  for (const concurrency of [1, CONCURRENCY]) {
    const messages = concurrency === 1 ? Math.min(MESSAGES, 2000) : MESSAGES;
    await run(master.address, 0, Math.min(messages, 1000), concurrency); // warm-up
    const results: Record<number, Run[]> = { 0: [], 1: [] };
    for (let r = 0; r < ROUNDS; r++) {
      for (const wait of r % 2 === 0 ? [0, 1] : [1, 0])
        results[wait]!.push(await run(master.address, wait, messages, concurrency));
    }
    const line = (wait: number): string => {
      const runs = results[wait]!;
      return `waitReplicas ${wait}: ${median(runs.map((x) => x.rate))} msgs/s, p50 ${ms(median(runs.map((x) => x.p50)))}, p99 ${ms(median(runs.map((x) => x.p99)))}`;
    };
    console.log(`concurrency ${concurrency}, ${messages} redundant messages x ${ROUNDS} rounds (median):`);
    console.log(`  ${line(0)}`);
    console.log(`  ${line(1)}`);
  }
} finally {
  await replica.stop();
  await master.stop();
}
