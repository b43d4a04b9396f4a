/**
 * Calls of one kind made close together (one tick, or one turn of the event loop) sent to Redis as one
 * command: many messages' claims in one script call, their completions in one MSET, their cleanups in one
 * DEL. Each message still waits for its own step (the round trips of a message do not change), but Redis and
 * the client handle one command instead of dozens: fewer command dispatches, script calls and replica
 * entries on the server, fewer command objects and promises in ioredis.
 */
import { InvariantError } from '../errors.js';

/** When a batch is sent: a function that runs a callback later, like `process.nextTick` or `setImmediate`. */
export type Schedule = (flush: () => void) => void;

interface Entry<I, R> {
  readonly item: I;
  readonly resolve: (result: R) => void;
  readonly reject: (error: unknown) => void;
}

export class Batcher<I, R> {
  private pending: Entry<I, R>[] = [];
  private scheduled = false;

  /**
   * @param send sends one batch (at most `maxItems` items) and resolves with one result per item, in order:
   *   an `Error` fails that item alone; a rejection fails every item of the batch.
   * @param gate once `schedule` closed a batch, it is sent only when `gate` calls back (an `AckFlush`: after
   *   the acks issued before the close were written); items added meanwhile go into the next batch, which
   *   waits for its own gate.
   */
  constructor(
    private readonly send: (items: readonly I[]) => Promise<readonly (R | Error)[]>,
    private readonly maxItems: number,
    private readonly schedule: Schedule,
    private readonly gate?: Schedule,
  ) {}

  add(item: I): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        this.schedule(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const entries = this.pending;
    this.pending = [];
    if (this.gate === undefined) this.sendAll(entries);
    else this.gate(() => this.sendAll(entries));
  };

  private sendAll(entries: readonly Entry<I, R>[]): void {
    for (let start = 0; start < entries.length; start += this.maxItems) {
      this.sendBatch(entries.length <= this.maxItems ? entries : entries.slice(start, start + this.maxItems));
    }
  }

  private sendBatch(entries: readonly Entry<I, R>[]): void {
    this.send(entries.map((entry) => entry.item)).then(
      (results) => {
        if (results.length !== entries.length) {
          const error = new InvariantError(`a batch of ${entries.length} got ${results.length} results`);
          for (const entry of entries) entry.reject(error);
          return;
        }
        entries.forEach((entry, i) => {
          const result = results[i] as R | Error;
          if (result instanceof Error) entry.reject(result);
          else entry.resolve(result);
        });
      },
      (error: unknown) => {
        for (const entry of entries) entry.reject(error);
      },
    );
  }
}
