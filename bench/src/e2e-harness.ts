/** What the end-to-end benchmarks (raw ceiling and Beetle) have in common. */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { busyPercent, machineCpu, percentile, round, serviceCpu, serviceCpuSince } from './common.js';

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
  /** CPU of all RabbitMQ nodes / all Redis servers on the machine per message, microseconds (Linux `/proc`). */
  readonly brokerCpuUs: number;
  readonly redisCpuUs: number;
  /** Whole machine (all cores, every process) busy during the run, percent. */
  readonly machineBusy: number;
  /** Event loop delay of the benchmark process during the run, milliseconds. */
  readonly loopDelayP50: number;
  readonly loopDelayP99: number;
  /** Beetle only: time per delivery inside the subscriber (slot taken → settled), milliseconds. */
  readonly processingP50?: number;
  readonly processingP99?: number;
}

export interface E2eHarness {
  readonly name: string;
  readonly settings: string;
  /** As fast as the window allows, or open loop at `rate` messages per second. */
  run(messages: number, rate?: number): Promise<E2eRun>;
  close(): Promise<void>;
}

/** Starts the machine-wide and process measurements of a run. */
export function startMeters(): {
  cpu: NodeJS.CpuUsage;
  machine: ReturnType<typeof machineCpu>;
  services: ReturnType<typeof serviceCpu>;
  loop: IntervalHistogram;
} {
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  return { cpu: process.cpuUsage(), machine: machineCpu(), services: serviceCpu(), loop };
}

export function summarize(
  messages: number,
  seconds: number,
  latencies: readonly number[],
  meters: ReturnType<typeof startMeters>,
  extra: { handlerRuns: number; requeues: number },
): E2eRun {
  meters.loop.disable();
  const cpu = process.cpuUsage(meters.cpu);
  const services = serviceCpuSince(meters.services);
  return {
    brokerCpuUs: round((services.brokers * 1e6) / messages, 1),
    redisCpuUs: round((services.redis * 1e6) / messages, 1),
    machineBusy: busyPercent(meters.machine, machineCpu()),
    loopDelayP50: round(meters.loop.percentile(50) / 1e6, 1),
    loopDelayP99: round(meters.loop.percentile(99) / 1e6, 1),
    rate: round(messages / seconds),
    cpuUs: round((cpu.user + cpu.system) / messages, 1),
    seconds: round(seconds, 2),
    p50: round(percentile(latencies, 50), 1),
    p99: round(percentile(latencies, 99), 1),
    ...extra,
  };
}
