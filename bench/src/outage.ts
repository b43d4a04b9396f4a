/**
 * Publisher memory during a broker outage. A child process (`outage-publisher.ts`) publishes redundant
 * messages to a live broker and a second one that goes away; the parent samples the child's RSS
 * (`/proc/<pid>/status` VmRSS) every 200 ms.
 *
 * Modes: `stop-broker` (default) starts a disposable broker (`startBroker`), publishes 10 s with both brokers
 * up, then SIGKILLs it for the rest of the run; `dead-port` names a port nothing listens on from the start.
 * Either way the child publishes `warm-up (10 s) + outageSeconds`. The live queue is purged every 5 s so the
 * broker does not fill up.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort, type ServiceHandle, startBroker } from '@beetle/test-services';
import { median, rawBroker, round, sleep, type BenchOptions } from './common.js';

const WARM_SECONDS = 10;
const SAMPLE_MS = 200;
const DISPOSABLE_PORT = Number(process.env.BEETLE_BENCH_OUTAGE_PORT ?? 5695);
/** Bounded: peak at most this far above the steady state, and at most this much growth over the last half. */
const PEAK_LIMIT_MB = 50;
const TREND_LIMIT_MB = 10;

export type OutageMode = 'stop-broker' | 'dead-port';

export interface OutageResult {
  readonly mode: OutageMode;
  readonly servers: readonly string[];
  readonly outageSeconds: number;
  readonly startMb: number;
  readonly steadyMb: number;
  readonly peakMb: number;
  readonly endMb: number;
  /** Linear-fit RSS growth over the last half of the outage. */
  readonly lastHalfGrowthMb: number;
  readonly bounded: boolean;
  readonly verdict: string;
  /** Publishes completed by the child during the outage, per second, and how many copies they placed. */
  readonly outageRate: number;
  readonly child: Record<string, unknown>;
}

interface Sample {
  readonly t: number;
  readonly mb: number;
}

function vmRssMb(pid: number): number | undefined {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Least-squares slope (MB per second). */
function slope(samples: readonly Sample[]): number {
  const n = samples.length;
  if (n < 2) return 0;
  const mt = samples.reduce((a, s) => a + s.t, 0) / n;
  const mm = samples.reduce((a, s) => a + s.mb, 0) / n;
  let num = 0;
  let den = 0;
  for (const s of samples) {
    num += (s.t - mt) * (s.mb - mm);
    den += (s.t - mt) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export async function outage(
  servers: readonly string[],
  options: BenchOptions,
  mode: OutageMode = 'stop-broker',
): Promise<OutageResult> {
  const live = servers[0];
  if (live === undefined) throw new Error('no broker configured');
  let effectiveMode = mode;
  let disposable: ServiceHandle | undefined;
  let second: string;
  if (mode === 'stop-broker') {
    try {
      options.log(`  starting a disposable broker on ${DISPOSABLE_PORT} …`);
      disposable = await startBroker(DISPOSABLE_PORT);
      second = disposable.address;
    } catch (error) {
      options.log(`  could not start a disposable broker (${String(error)}); using a dead port`);
      effectiveMode = 'dead-port';
      second = `127.0.0.1:${await freePort()}`;
    }
  } else {
    second = `127.0.0.1:${await freePort()}`;
  }
  const queue = `bench-outage-${Date.now().toString(36)}`;
  const pair = [live, second];
  const total = WARM_SECONDS + options.outageSeconds;
  const script = fileURLToPath(new URL('./outage-publisher.ts', import.meta.url));
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', script, '--servers', pair.join(','), '--queue', queue, '--seconds', String(total)],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start the publisher process');
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const lines: Record<string, unknown>[] = [];
  let buffered = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        stderr += `${line}\n`;
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code));

  const samples: Sample[] = [];
  let readyAt: number | undefined;
  let outageAt: number | undefined;
  const purger = await rawBroker(live);
  purger.channel.on('error', () => undefined);
  let lastPurge = Date.now();
  const deadline = Date.now() + (total + 120) * 1000;
  try {
    while (exitCode === undefined) {
      if (Date.now() > deadline) throw new Error(`publisher process still running after ${total + 120} s`);
      await sleep(SAMPLE_MS);
      if (readyAt === undefined && lines.some((l) => l.event === 'ready')) {
        readyAt = Date.now();
        options.log(`  publisher ready (pid ${pid}), publishing for ${total} s`);
      }
      if (readyAt === undefined) continue;
      const t = (Date.now() - readyAt) / 1000;
      const mb = vmRssMb(pid);
      if (mb !== undefined) samples.push({ t, mb });
      if (outageAt === undefined && t >= WARM_SECONDS) {
        outageAt = t;
        if (disposable !== undefined) {
          options.log(`  t=${t.toFixed(1)} s: killing broker ${second}`);
          await disposable.kill();
        }
      }
      if (Date.now() - lastPurge > 5000) {
        lastPurge = Date.now();
        await purger.channel.purgeQueue(queue).catch(() => undefined);
        const last = lines.at(-1);
        if (last !== undefined) {
          options.log(
            `  t=${t.toFixed(0)} s rss ${mb?.toFixed(0)} MB, published ${String(last.published)}, ` +
              `1 copy ${String(last.copies1)}, 2 copies ${String(last.copies2)}, errors ${String(last.errors)}`,
          );
        }
      }
    }
  } finally {
    if (exitCode === undefined) child.kill('SIGKILL');
    await exited;
    await purger.channel.deleteQueue(queue).catch(() => undefined);
    await purger.channel.deleteExchange(queue).catch(() => undefined);
    await purger.connection.close().catch(() => undefined);
    if (disposable !== undefined) await disposable.stop().catch(() => undefined);
  }
  if (exitCode !== 0) throw new Error(`publisher process exited with ${String(exitCode)}: ${stderr.trim()}`);
  const start = outageAt ?? WARM_SECONDS;
  // Steady state: the second half of the warm-up (the first seconds are start-up: JIT, connections).
  const warm = samples.filter((s) => s.t >= start / 2 && s.t < start);
  const during = samples.filter((s) => s.t >= start);
  if (during.length < 2) throw new Error('too few RSS samples');
  const halfAt = start + (during.at(-1)!.t - start) / 2;
  const lastHalf = during.filter((s) => s.t >= halfAt);
  const steadyMb = median((warm.length > 0 ? warm : during.slice(0, 10)).map((s) => s.mb));
  const peakMb = Math.max(...during.map((s) => s.mb));
  const lastHalfGrowthMb = slope(lastHalf) * (lastHalf.at(-1)!.t - lastHalf[0]!.t);
  const bounded = peakMb - steadyMb < PEAK_LIMIT_MB && lastHalfGrowthMb < TREND_LIMIT_MB;
  const atOutage = [...lines].reverse().find((l) => typeof l.t === 'number' && l.t <= start);
  const last = lines.filter((l) => l.event !== 'done').at(-1) ?? {};
  const outagePublished = Number(last.published ?? 0) - Number(atOutage?.published ?? 0);
  const outageDuration = Number(last.t ?? 0) - Number(atOutage?.t ?? 0);
  return {
    mode: effectiveMode,
    servers: pair,
    outageSeconds: options.outageSeconds,
    startMb: round(samples[0]!.mb, 1),
    steadyMb: round(steadyMb, 1),
    peakMb: round(peakMb, 1),
    endMb: round(samples.at(-1)!.mb, 1),
    lastHalfGrowthMb: round(lastHalfGrowthMb, 1),
    bounded,
    verdict: bounded
      ? `flat: peak - steady ${round(peakMb - steadyMb, 1)} MB < ${PEAK_LIMIT_MB} MB, last-half growth ${round(lastHalfGrowthMb, 1)} MB < ${TREND_LIMIT_MB} MB`
      : `NOT flat: peak - steady ${round(peakMb - steadyMb, 1)} MB (limit ${PEAK_LIMIT_MB}), last-half growth ${round(lastHalfGrowthMb, 1)} MB (limit ${TREND_LIMIT_MB})`,
    outageRate: outageDuration > 0 ? round(outagePublished / outageDuration) : 0,
    child: last,
  };
}
