/**
 * The deployment-shaped benchmarks (`deployment.ts`: publisher and consumers in processes of their own) and
 * their report lines: e2e (raw ceiling vs Beetle, end to end), backlog (consuming a queued backlog), defaults
 * (Beetle with nothing tuned vs Ruby Beetle's default rate) and scale (brokers, consumer processes, body
 * sizes, queues).
 */
import { median, round, sleep, type BenchOptions } from './common.js';
import { runDeployment, type DeploymentRun, type DeploymentSpec } from './deployment.js';

export const DEPLOYMENT_TARGETS = {
  e2eRatio: 0.8,
  backlogRatio: 0.6,
  /** Ruby Beetle at its defaults (prefetch 1, one handler at a time) worked off a backlog at 850 msgs/s here. */
  rubyDefaultRate: 850,
  defaultsOverRuby: 5,
} as const;

/** Pause between two measured runs (ms): a run leaves work on the brokers (deleting its queues, GC). */
const SETTLE_MS = 1500;

export interface StepContext {
  readonly servers: readonly string[];
  readonly redisServer: string;
  readonly options: BenchOptions;
  readonly quick: boolean;
}

export interface Comparison {
  readonly raw: DeploymentRun;
  readonly beetle: DeploymentRun;
  readonly ratio: number;
  readonly perRound: { raw: number; beetle: number; ratio: number }[];
}

const medianRun = (runs: readonly DeploymentRun[]): DeploymentRun => {
  const m = (pick: (r: DeploymentRun) => number, digits = 1): number => round(median(runs.map(pick)), digits);
  const outcomes: Record<string, number> = {};
  for (const r of runs) for (const [k, n] of Object.entries(r.outcomes)) outcomes[k] = (outcomes[k] ?? 0) + n;
  return {
    rate: m((r) => r.rate, 0),
    seconds: m((r) => r.seconds, 2),
    p50: m((r) => r.p50),
    p99: m((r) => r.p99),
    handlerRuns: Math.max(...runs.map((r) => r.handlerRuns)),
    requeues: Math.max(...runs.map((r) => r.requeues)),
    consumerCpuUs: m((r) => r.consumerCpuUs),
    publisherCpuUs: m((r) => r.publisherCpuUs),
    brokerCpuUs: m((r) => r.brokerCpuUs),
    redisCpuUs: m((r) => r.redisCpuUs),
    machineBusy: m((r) => r.machineBusy, 0),
    consumerPeakRssMb: m((r) => r.consumerPeakRssMb),
    outcomes,
  };
};

const describeRun = (r: DeploymentRun): string =>
  `${r.rate} msgs/s (p50 ${r.p50} ms, p99 ${r.p99} ms; CPU/msg consumer ${r.consumerCpuUs} us, publisher ` +
  `${r.publisherCpuUs}, brokers ${r.brokerCpuUs}, Redis ${r.redisCpuUs}; machine ${r.machineBusy}% busy; ` +
  `consumer peak RSS ${r.consumerPeakRssMb} MB; requeues ${r.requeues})`;

/** Raw and Beetle alternating (raw first in even rounds), median of the rounds. */
async function compare(
  ctx: StepContext,
  spec: Omit<DeploymentSpec, 'kind' | 'servers' | 'redisServer' | 'messages'>,
  beetleKind: 'beetle' | 'beetle-defaults' = 'beetle',
): Promise<Comparison> {
  const base = {
    servers: ctx.servers.slice(0, 2),
    redisServer: ctx.redisServer,
    messages: ctx.options.messages,
  };
  const run = (kind: DeploymentSpec['kind']): Promise<DeploymentRun> =>
    runDeployment({ ...base, ...spec, kind });
  // Warm-up: the brokers' first queues of a sitting, the page cache of the workers' modules.
  await run('raw');
  await run(beetleKind);
  const raws: DeploymentRun[] = [];
  const beetles: DeploymentRun[] = [];
  for (let r = 0; r < ctx.options.rounds; r++) {
    for (const kind of r % 2 === 0 ? (['raw', beetleKind] as const) : ([beetleKind, 'raw'] as const)) {
      await sleep(SETTLE_MS);
      (kind === 'raw' ? raws : beetles).push(await run(kind));
    }
    const a = raws.at(-1)!;
    const b = beetles.at(-1)!;
    ctx.options.log(`  round ${r + 1}: raw ${describeRun(a)}; Beetle ${describeRun(b)}`);
  }
  const raw = medianRun(raws);
  const beetle = medianRun(beetles);
  return {
    raw,
    beetle,
    ratio: round(beetle.rate / raw.rate, 3),
    perRound: raws.map((a, i) => ({
      raw: a.rate,
      beetle: beetles[i]!.rate,
      ratio: round(beetles[i]!.rate / a.rate, 3),
    })),
  };
}

export interface E2eResult extends Comparison {
  /** Both offered half of Beetle's flood rate, open loop: latency below saturation. */
  readonly paced?: { rate: number; raw: DeploymentRun; beetle: DeploymentRun };
  /** Both offered fractions of raw's flood rate: did they keep up (97 % of the rate, p99 < 250 ms)? */
  readonly offered: { fraction: number; rate: number; raw: DeploymentRun; beetle: DeploymentRun }[];
}

const OFFERED_FRACTIONS = [0.6, 0.7, 0.8] as const;
const OFFERED_SECONDS = 6;
const KEPT_UP_P99_MS = 250;
const keptUp = (run: DeploymentRun, rate: number): boolean =>
  run.rate >= 0.97 * rate && run.p99 < KEPT_UP_P99_MS;

export async function e2eStep(ctx: StepContext): Promise<E2eResult> {
  const comparison = await compare(ctx, { mode: 'e2e' });
  const base = { servers: ctx.servers.slice(0, 2), redisServer: ctx.redisServer, mode: 'e2e' } as const;
  const pacedRun = async (
    rate: number,
    seconds: number,
  ): Promise<{ raw: DeploymentRun; beetle: DeploymentRun }> => {
    const messages = Math.max(100, Math.round(rate * seconds));
    await sleep(SETTLE_MS);
    const raw = await runDeployment({ ...base, kind: 'raw', messages, rate });
    await sleep(SETTLE_MS);
    const beetle = await runDeployment({ ...base, kind: 'beetle', messages, rate });
    return { raw, beetle };
  };
  if (ctx.quick) return { ...comparison, offered: [] };
  const rate = Math.max(10, Math.round(comparison.beetle.rate / 2));
  const paced = { rate, ...(await pacedRun(rate, 8)) };
  ctx.options.log(`  paced ${rate} msgs/s: raw p99 ${paced.raw.p99} ms, Beetle p99 ${paced.beetle.p99} ms`);
  const offered: E2eResult['offered'] = [];
  for (const fraction of OFFERED_FRACTIONS) {
    const offeredRate = Math.round(comparison.raw.rate * fraction);
    const runs = await pacedRun(offeredRate, OFFERED_SECONDS);
    offered.push({ fraction, rate: offeredRate, ...runs });
    ctx.options.log(
      `  offered ${offeredRate} msgs/s: raw ${runs.raw.rate} p99 ${runs.raw.p99} ms, Beetle ${runs.beetle.rate} p99 ${runs.beetle.p99} ms`,
    );
  }
  return { ...comparison, paced, offered };
}

export const backlogStep = (ctx: StepContext): Promise<Comparison> => compare(ctx, { mode: 'backlog' });

export interface DefaultsResult {
  readonly rate: number;
  readonly runs: number[];
  readonly run: DeploymentRun;
  readonly overRuby: number;
  /** The same backlog consumed by Beetle set as Ruby Beetle's defaults are (prefetch 1, one handler at a time). */
  readonly rubyShaped: { readonly rate: number; readonly runs: number[]; readonly messages: number };
  /** The defaults' rate over the Ruby-shaped rate of this run. */
  readonly overRubyShaped: number;
}

/** Ruby Beetle's consumer defaults: prefetch_count 1, one message handled at a time. */
const RUBY_SHAPED = { prefetchCount: 1, subscriberConcurrency: 1 } as const;

/**
 * A `Client` given only brokers and Redis database works off a backlog, median of the rounds; then the same
 * with Ruby's defaults, so that the ratio is measured on this machine in this run (the 850 msgs/s reference
 * was measured on another machine of this kind).
 */
export async function defaultsStep(ctx: StepContext): Promise<DefaultsResult> {
  const backlog = (spec: Partial<DeploymentSpec>, messages: number): Promise<DeploymentRun> =>
    runDeployment({
      kind: 'beetle-defaults',
      mode: 'backlog',
      servers: ctx.servers.slice(0, 2),
      redisServer: ctx.redisServer,
      messages,
      ...spec,
    });
  const runs: DeploymentRun[] = [];
  const rubyRuns: DeploymentRun[] = [];
  // About 2 s per run at Ruby's rate.
  const rubyMessages = Math.min(ctx.options.messages, 1500);
  for (let r = 0; r < ctx.options.rounds; r++) {
    await sleep(SETTLE_MS);
    const run = await backlog({}, ctx.options.messages);
    ctx.options.log(`  round ${r + 1}: ${describeRun(run)}`);
    runs.push(run);
    await sleep(SETTLE_MS);
    const ruby = await backlog({ kind: 'beetle', beetleSettings: RUBY_SHAPED }, rubyMessages);
    ctx.options.log(`  round ${r + 1}, Ruby's defaults: ${describeRun(ruby)}`);
    rubyRuns.push(ruby);
  }
  const run = medianRun(runs);
  const ruby = medianRun(rubyRuns);
  return {
    rate: run.rate,
    runs: runs.map((r) => r.rate),
    run,
    overRuby: round(run.rate / DEPLOYMENT_TARGETS.rubyDefaultRate, 2),
    rubyShaped: { rate: ruby.rate, runs: rubyRuns.map((r) => r.rate), messages: rubyMessages },
    overRubyShaped: round(run.rate / ruby.rate, 2),
  };
}

export interface ScaleFigure {
  readonly name: string;
  readonly messages: number;
  readonly run: DeploymentRun;
  /** Body bytes per second through the handler (bodies only). */
  readonly mbPerSecond: number;
}

/** Beetle end to end, one run per shape, beside the same run's two-broker one-consumer baseline. */
export async function scaleStep(ctx: StepContext, thirdServer: string | undefined): Promise<ScaleFigure[]> {
  const n = ctx.options.messages;
  const shapes: { name: string; spec: Partial<DeploymentSpec>; messages: number }[] = [
    { name: 'baseline: 2 brokers, 1 consumer process, 16 B bodies', spec: {}, messages: n },
    ...(thirdServer === undefined
      ? []
      : [{ name: '3 brokers', spec: { servers: [...ctx.servers.slice(0, 2), thirdServer] }, messages: n }]),
    { name: '2 consumer processes on one queue', spec: { consumers: 2 }, messages: n },
    { name: '4 consumer processes on one queue', spec: { consumers: 4 }, messages: n },
    { name: '1 KB bodies', spec: { bodyBytes: 1024 }, messages: n },
    { name: '64 KB bodies', spec: { bodyBytes: 64 * 1024 }, messages: Math.min(n, ctx.quick ? 500 : 3000) },
    { name: '1 MB bodies', spec: { bodyBytes: 1024 * 1024 }, messages: Math.min(n, ctx.quick ? 50 : 300) },
    { name: '100 queues, 1 consumer process', spec: { queues: 100 }, messages: n },
  ];
  const figures: ScaleFigure[] = [];
  for (const shape of shapes) {
    await sleep(SETTLE_MS);
    const run = await runDeployment({
      kind: 'beetle',
      mode: 'e2e',
      servers: ctx.servers.slice(0, 2),
      redisServer: ctx.redisServer,
      ...shape.spec,
      messages: shape.messages,
    });
    const mbPerSecond = round((run.rate * (shape.spec.bodyBytes ?? 16)) / 1024 / 1024, 1);
    figures.push({ name: shape.name, messages: shape.messages, run, mbPerSecond });
    ctx.options.log(`  ${shape.name}: ${describeRun(run)}`);
  }
  return figures;
}

export const verdict = (ok: boolean): string => (ok ? 'MET' : 'MISSED');

const cpuLine = (r: DeploymentRun): string =>
  `consumer ${r.consumerCpuUs} + publisher ${r.publisherCpuUs} + brokers ${r.brokerCpuUs} + Redis ${r.redisCpuUs} = ` +
  `${round(r.consumerCpuUs + r.publisherCpuUs + r.brokerCpuUs + r.redisCpuUs)} us`;

export function reportE2e(out: (line: string) => void, e: E2eResult): void {
  out('');
  out(
    'End to end, redundant, publisher and consumer in processes of their own (publish 2 copies, consume both, ack):',
  );
  out(
    '  raw ceiling: amqplib, confirmed publishes (1000 in flight), prefetch 100, in-memory dedup, acks per loop turn (multiple)',
  );
  out('  Beetle: Publisher and Subscriber at their defaults (publisherMaxInFlight 1000, prefetchCount 100,');
  out('          subscriberConcurrency 100), RedisDedupStore, empty handler');
  out(`  raw amqplib   ${describeRun(e.raw)}`);
  out(`  Beetle        ${describeRun(e.beetle)}`);
  out(`  CPU per message: raw ${cpuLine(e.raw)}; Beetle ${cpuLine(e.beetle)}`);
  out(
    `  (latency at saturation, backlog included; Beetle outcomes over all rounds ${JSON.stringify(e.beetle.outcomes)})`,
  );
  if (e.paced) {
    out(
      `  below saturation (open loop, ${e.paced.rate} msgs/s): latency p50/p99 raw ${e.paced.raw.p50}/${e.paced.raw.p99} ms, ` +
        `Beetle ${e.paced.beetle.p50}/${e.paced.beetle.p99} ms`,
    );
  }
  if (e.offered.length > 0) {
    out(
      `  offered load (open loop, ${OFFERED_SECONDS} s; kept up = 97 % handled and p99 < ${KEPT_UP_P99_MS} ms):`,
    );
    for (const o of e.offered) {
      const side = (r: DeploymentRun): string =>
        `${r.rate} msgs/s p99 ${r.p99} ms ${keptUp(r, o.rate) ? 'kept up' : 'fell behind'}`;
      out(`    ${o.rate} msgs/s (${o.fraction} of raw): raw ${side(o.raw)}; Beetle ${side(o.beetle)}`);
    }
  }
  out(
    `  ratio ${e.ratio} of raw  (target >= ${DEPLOYMENT_TARGETS.e2eRatio}: ${verdict(e.ratio >= DEPLOYMENT_TARGETS.e2eRatio)}); ` +
      `per round ${e.perRound.map((r) => r.ratio).join(', ')}`,
  );
}

export function reportBacklog(out: (line: string) => void, b: Comparison, messages: number): void {
  out('');
  out(
    `Backlog consume (${messages} redundant messages queued first, both copies; the consumer process starts then):`,
  );
  out(`  raw amqplib, in-memory dedup   ${describeRun(b.raw)}`);
  out(`  Beetle, RedisDedupStore        ${describeRun(b.beetle)}`);
  out(`  CPU per message: raw ${cpuLine(b.raw)}; Beetle ${cpuLine(b.beetle)}`);
  out(
    `  ratio ${b.ratio} of raw  (target >= ${DEPLOYMENT_TARGETS.backlogRatio}: ${verdict(b.ratio >= DEPLOYMENT_TARGETS.backlogRatio)}); ` +
      `per round ${b.perRound.map((r) => r.ratio).join(', ')}`,
  );
}

export function reportDefaults(out: (line: string) => void, d: DefaultsResult, messages: number): void {
  const factor = DEPLOYMENT_TARGETS.defaultsOverRuby;
  out('');
  out(
    `Defaults: a Client given only brokers and Redis db works off a backlog of ${messages} redundant messages:`,
  );
  out(`  ${describeRun(d.run)}; rounds ${d.runs.join(', ')}`);
  out(
    `  Ruby's defaults in this run (prefetchCount 1, subscriberConcurrency 1, ${d.rubyShaped.messages} messages): ` +
      `${d.rubyShaped.rate} msgs/s; rounds ${d.rubyShaped.runs.join(', ')}`,
  );
  out(
    `  ${d.rate} msgs/s = ${d.overRubyShaped} x Ruby's defaults measured in this run  ` +
      `(target >= ${factor} x: ${verdict(d.overRubyShaped >= factor)})`,
  );
  out(
    `  ${d.rate} msgs/s = ${d.overRuby} x Ruby Beetle's own default rate on another machine of this kind ` +
      `(reference ${DEPLOYMENT_TARGETS.rubyDefaultRate} msgs/s, 2026-12-03; ${factor} x = ` +
      `${factor * DEPLOYMENT_TARGETS.rubyDefaultRate} msgs/s: ${verdict(d.overRuby >= factor)})`,
  );
}

export function reportScale(
  out: (line: string) => void,
  figures: readonly ScaleFigure[],
  third: boolean,
): void {
  out('');
  out('Scale (Beetle end to end, one run each; CPU per message in us, consumer peak RSS):');
  const base = figures[0];
  for (const f of figures) {
    const r = f.run;
    out(
      `  ${f.name.padEnd(52)} ${String(r.rate).padStart(6)} msgs/s ${String(f.mbPerSecond).padStart(6)} MB/s  ` +
        `(${base === undefined ? '' : `${round(r.rate / base.run.rate, 2)} x baseline; `}${f.messages} msgs; CPU ${cpuLine(r)}; ` +
        `RSS ${r.consumerPeakRssMb} MB; machine ${r.machineBusy}% busy)`,
    );
  }
  if (!third) out('  3 brokers: not measured (no third broker: bash scripts/services.sh up --third-broker)');
}
