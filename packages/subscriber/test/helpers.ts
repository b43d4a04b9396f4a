import { type DedupStore, type Logger, type Payload, type RawDelivery } from '@beetle/core';
import { encodeMessage, type Clock, type EncodeOptions, type TimerHandle } from '@beetle/core/kit';
import type { DeliverySettler } from '@beetle/subscriber';

/** A manual clock: time only moves with `advance`, which fires due timers in order. */
export class FakeClock implements Clock {
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  constructor(public ms = 1_700_000_000_000) {}

  now(): number {
    return Math.floor(this.ms / 1000);
  }

  nowMs(): number {
    return this.ms;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { at: this.ms + ms, fn });
    return id;
  }

  clearTimeout(handle: TimerHandle): void {
    this.timers.delete(handle as number);
  }

  get pendingTimers(): number {
    return this.timers.size;
  }

  /** Moves time forward, firing due timers (and letting promise chains run between them). */
  async advance(ms: number): Promise<void> {
    const target = this.ms + ms;
    for (;;) {
      await flush();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers)
        if (entry[1].at <= target && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.ms = Math.max(this.ms, next[1].at);
      next[1].fn();
    }
    this.ms = target;
    await flush();
  }

  /** Advances in whole seconds. */
  advanceSeconds(seconds: number): Promise<void> {
    return this.advance(seconds * 1000);
  }
}

/** Lets pending promise callbacks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Records settle calls (and anything else pushed to `log`). */
export class SettleRecorder implements DeliverySettler {
  readonly replies: { replyTo: string; body: string; status: string }[] = [];
  ackResult = true;

  constructor(readonly log: string[] = []) {}

  get acks(): number {
    return this.log.filter((e) => e === 'ack').length;
  }

  get rejects(): number {
    return this.log.filter((e) => e === 'reject').length;
  }

  ack(): boolean {
    this.log.push('ack');
    return this.ackResult;
  }

  reject(): void {
    this.log.push('reject');
  }

  reply(replyTo: string, body: Buffer, headers: { readonly status: 'OK' | 'FAILED' }): Promise<void> {
    this.log.push('reply');
    this.replies.push({ replyTo, body: body.toString('utf8'), status: headers.status });
    return Promise.resolve();
  }
}

/** Wraps a store so that every call is recorded as `store.<method>` in `log`. */
export function recordingStore(inner: DedupStore, log: string[]): DedupStore {
  return new Proxy(inner, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]): unknown => {
        log.push(`store.${String(property)}`);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

export function rawDelivery(payload: Payload, options: EncodeOptions = {}, routingKey = 'q'): RawDelivery {
  const { body, properties } = encodeMessage(payload, options);
  return {
    content: body,
    fields: { routingKey, redelivered: false, exchange: routingKey },
    properties,
  };
}

/** A logger that keeps the message of each warning (other levels are dropped). */
export function warningsLogger(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  const logger: Logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (...args: unknown[]) => void warnings.push(String(args.find((a) => typeof a === 'string'))),
    error: () => undefined,
  };
  return { logger, warnings };
}
