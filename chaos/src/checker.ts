/**
 * The checker: reads the records the workers wrote and classifies every message id in the vocabulary of
 * RabbitMQ's Jepsen checker. Pure (no I/O), so it can be tested on its own.
 */

/** What the records say about one run, accumulated line by line. */
export class Tally {
  /** id → time (ms) of the publish attempt. */
  readonly attempted = new Map<string, number>();
  /** id → number of brokers that confirmed it (1 = partial redundant publish). */
  readonly confirmed = new Map<string, number>();
  /** id → time of the confirm. */
  readonly confirmedAt = new Map<string, number>();
  /** ids whose publish rejected or timed out (outcome unknown). */
  readonly failed = new Map<string, string>();
  /** id → every handler completion (time, pid). */
  readonly completions = new Map<string, { at: number; pid: number }[]>();
  /** id → what happened to its deliveries and handler runs (`P`, `D`, `H` records), for diagnostics. */
  readonly history = new Map<string, string[]>();
  /** ids held in a handler to be SIGKILLed there. */
  readonly held = new Set<string>();
  /** Consumer pids that held a handler to be SIGKILLed (the victims of `consumer-kill`). */
  readonly killedPids = new Set<number>();
  /** id → pids that finished processing a delivery of it (`P`: the store and the broker were told). */
  readonly processedBy = new Map<string, Set<number>>();
  totalCompletions = 0;
  malformed = 0;

  /** Adds one record line (see `protocol.ts`). */
  add(line: string): void {
    if (line === '') return;
    const [kind, id, at, a, b, c, d, e] = line.split(' ');
    const ms = Number(at);
    if (id === undefined || !Number.isFinite(ms)) {
      this.malformed++;
      return;
    }
    switch (kind) {
      case 'P': {
        let pids = this.processedBy.get(id);
        if (pids === undefined) {
          pids = new Set();
          this.processedBy.set(id, pids);
        }
        pids.add(Number(a));
        this.note(id, ms, `pid ${a} ${c} ${b} ${d}${e === '1' ? ' redelivered' : ''}`);
        break;
      }
      case 'A':
        this.attempted.set(id, ms);
        break;
      case 'C':
        this.confirmed.set(id, Number(a));
        this.confirmedAt.set(id, ms);
        this.note(id, ms, `publish confirmed by ${a} broker(s)`);
        break;
      case 'F':
        this.failed.set(id, a ?? 'Error');
        this.note(id, ms, `publish failed: ${a ?? 'Error'}`);
        break;
      case 'H':
        this.held.add(id);
        this.killedPids.add(Number(a));
        this.note(id, ms, `pid ${a} handler held (to be SIGKILLed)`);
        break;
      case 'D': {
        let list = this.completions.get(id);
        if (list === undefined) {
          list = [];
          this.completions.set(id, list);
        }
        list.push({ at: ms, pid: Number(a) });
        this.totalCompletions++;
        this.note(id, ms, `pid ${a} ${c ?? '?'} handler completed (attempt ${b ?? '?'})`);
        break;
      }
      default:
        this.malformed++;
    }
  }

  private note(id: string, ms: number, what: string): void {
    let list = this.history.get(id);
    if (list === undefined) {
      list = [];
      this.history.set(id, list);
    }
    list.push(`${ms} ${what}`);
  }

  /** The history of an id, times relative to its publish attempt. */
  describe(id: string): string[] {
    const start = this.attempted.get(id) ?? 0;
    return (this.history.get(id) ?? [])
      .map((entry) => {
        const space = entry.indexOf(' ');
        return { at: Number(entry.slice(0, space)), what: entry.slice(space + 1) };
      })
      .sort((x, y) => x.at - y.at)
      .map(({ at, what }) => `+${at - start}ms ${what}`);
  }

  /** Confirmed ids not completed yet. */
  pending(): number {
    let count = 0;
    for (const id of this.confirmed.keys()) if (!this.completions.has(id)) count++;
    return count;
  }
}

export interface Percentiles {
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

export interface Verdict {
  /** Publishes started. */
  readonly attempted: number;
  /** Publishes confirmed (the promise resolved). */
  readonly confirmed: number;
  /** Confirmed by one broker only (redundant publish degraded to one copy). */
  readonly partial: number;
  /** Publishes that rejected or timed out: not confirmed, outcome unknown. */
  readonly unconfirmed: number;
  /** Publishes neither confirmed nor failed when the run ended (publisher stopped with them in flight). */
  readonly unsettled: number;
  /** Ids with at least one handler completion. */
  readonly delivered: number;
  /** Handler completions in total. */
  readonly completions: number;
  /** Confirmed, never completed. */
  readonly lost: number;
  /** Completed more than once (not counting `rerunAfterKill`). */
  readonly duplicated: number;
  /**
   * Completed more than once, where every completion but the last was made by a consumer that was then
   * SIGKILLed before it finished processing that delivery (no `P` record): the handler had returned, the
   * store had not recorded it yet. At-least-once, as promised; only possible with `--concurrency` > 1 (the
   * other handlers running in the killed process).
   */
  readonly rerunAfterKill: number;
  /** Completed, never published. */
  readonly unexpected: number;
  /** Not confirmed but completed (fine: the publish's outcome was unknown). */
  readonly indeterminate: number;
  readonly lostIds: string[];
  /** Histories of (the first few) lost ids. */
  readonly lostHistory: Record<string, string[]>;
  readonly duplicatedIds: { id: string; times: number; pids: number[]; history: string[] }[];
  readonly unexpectedIds: string[];
  /** Publish attempt → first handler completion, in ms, over confirmed and completed ids. */
  readonly latencyMs: Percentiles;
  readonly malformedRecords: number;
}

const SHOWN_IDS = 20;

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] as number;
}

export function judge(tally: Tally): Verdict {
  const lostIds: string[] = [];
  let lost = 0;
  let partial = 0;
  const latencies: number[] = [];
  for (const [id, copies] of tally.confirmed) {
    if (copies < 2) partial++;
    const done = tally.completions.get(id);
    if (done === undefined) {
      lost++;
      if (lostIds.length < SHOWN_IDS) lostIds.push(id);
      continue;
    }
    const started = tally.attempted.get(id);
    const first = Math.min(...done.map((d) => d.at));
    if (started !== undefined) latencies.push(first - started);
  }
  let duplicated = 0;
  let rerunAfterKill = 0;
  let unexpected = 0;
  let indeterminate = 0;
  const duplicatedIds: Verdict['duplicatedIds'] = [];
  const unexpectedIds: string[] = [];
  for (const [id, done] of tally.completions) {
    const cutOff = (c: { pid: number }): boolean =>
      tally.killedPids.has(c.pid) && !(tally.processedBy.get(id)?.has(c.pid) ?? false);
    // Records of different workers are read file by file: order the completions by time.
    const inOrder = [...done].sort((x, y) => x.at - y.at);
    if (done.length > 1 && inOrder.slice(0, -1).every(cutOff)) {
      rerunAfterKill++;
    } else if (done.length > 1) {
      duplicated++;
      if (duplicatedIds.length < SHOWN_IDS)
        duplicatedIds.push({
          id,
          times: done.length,
          pids: done.map((d) => d.pid),
          history: tally.describe(id),
        });
    }
    if (!tally.attempted.has(id)) {
      unexpected++;
      if (unexpectedIds.length < SHOWN_IDS) unexpectedIds.push(id);
    } else if (!tally.confirmed.has(id)) {
      indeterminate++;
    }
  }
  let unsettled = 0;
  for (const id of tally.attempted.keys()) {
    if (!tally.confirmed.has(id) && !tally.failed.has(id)) unsettled++;
  }
  latencies.sort((a, b) => a - b);
  return {
    attempted: tally.attempted.size,
    confirmed: tally.confirmed.size,
    partial,
    unconfirmed: tally.failed.size,
    unsettled,
    delivered: tally.completions.size,
    completions: tally.totalCompletions,
    lost,
    duplicated,
    rerunAfterKill,
    unexpected,
    indeterminate,
    lostIds,
    lostHistory: Object.fromEntries(lostIds.slice(0, 5).map((id) => [id, tally.describe(id)])),
    duplicatedIds,
    unexpectedIds,
    latencyMs: {
      p50: percentile(latencies, 50),
      p95: percentile(latencies, 95),
      p99: percentile(latencies, 99),
      max: latencies.length === 0 ? 0 : (latencies[latencies.length - 1] as number),
    },
    malformedRecords: tally.malformed,
  };
}
