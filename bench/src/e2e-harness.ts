/** What the end-to-end benchmarks (raw ceiling and Beetle) have in common. */
import { percentile, round } from './common.js';

export interface E2eRun {
  /** Messages per second: N messages published (both copies) until both copies of every message were acked. */
  readonly rate: number;
  readonly seconds: number;
  /** Publish start → handler completion (first copy), milliseconds. */
  readonly p50: number;
  readonly p99: number;
  /** Handler executions (exactly N when dedup works). */
  readonly handlerRuns: number;
  /** Deliveries handed back to the broker (e.g. `HandlerNotYetTimedOut` for a copy racing the other). */
  readonly requeues: number;
  /** Client process CPU (user + system) per message, microseconds: steadier than rates on a busy machine. */
  readonly cpuUs: number;
}

export interface E2eHarness {
  readonly name: string;
  readonly settings: string;
  run(messages: number): Promise<E2eRun>;
  close(): Promise<void>;
}

export function summarize(
  messages: number,
  seconds: number,
  latencies: readonly number[],
  cpu: NodeJS.CpuUsage,
  extra: { handlerRuns: number; requeues: number },
): E2eRun {
  return {
    rate: round(messages / seconds),
    cpuUs: round((cpu.user + cpu.system) / messages, 1),
    seconds: round(seconds, 2),
    p50: round(percentile(latencies, 50), 1),
    p99: round(percentile(latencies, 99), 1),
    ...extra,
  };
}
