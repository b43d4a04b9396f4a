/**
 * One run of a handler: the message as the handler sees it, its context, its timeout and the forced stop.
 * JS cannot pre-empt a handler: at the timeout (or stop) its signal aborts and a late result is ignored.
 */
import type { BeetleMessage, DeliverySource, Logger, MessageDecodingError, RawDelivery } from '@beetle/core';
import { ownHeaders, type Clock, type TimerHandle } from '@beetle/core/kit';
import { HandlerTimeoutError, SubscriberStoppedError } from './errors.js';
import type { HandlerContext, HandlerMessage, ResolvedHandler, UndecodedMessage } from './handler.js';

/** The handler message of one delivery; `attempt` is set before each run. */
export type MutableHandlerMessage = Omit<HandlerMessage, 'attempt'> & { attempt: number };

export type RunResult =
  | { readonly kind: 'ok'; readonly value: unknown }
  | { readonly kind: 'error'; readonly error: unknown }
  | { readonly kind: 'abandoned' };

/** Who runs the handler (the processing of one delivery): its clock and where it logs. */
export interface RunOwner {
  readonly clock: Clock;
  readonly logger: Logger;
  /** Log context of the delivery. */
  readonly context: Readonly<Record<string, unknown>>;
}

/** Node fires longer timers after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function handlerMessage(m: BeetleMessage): MutableHandlerMessage {
  return {
    decoded: true,
    attempt: 0,
    uuid: m.uuid,
    timestamp: m.timestamp,
    formatVersion: m.formatVersion,
    flags: m.flags,
    redundant: m.redundant,
    expiresAt: m.expiresAt,
    headers: m.headers,
    body: m.body,
    routingKey: m.routingKey,
    exchange: m.exchange,
    redelivered: m.redelivered,
    deliveryCount: m.deliveryCount,
    replyTo: m.replyTo,
    queue: m.queue,
    server: m.server,
    // Bound methods rather than arrow closures: callable detached as before, and much cheaper to create where
    // functions get their names set at runtime (esbuild's keepNames, as under tsx).
    text: m.text.bind(m),
    json: m.json.bind(m),
  };
}

export function undecodedMessage(
  delivery: RawDelivery,
  source: DeliverySource,
  error: MessageDecodingError,
): UndecodedMessage {
  const { messageId, headers } = delivery.properties;
  return {
    decoded: false,
    queue: source.queue,
    server: source.server,
    uuid: typeof messageId === 'string' ? messageId : undefined,
    body: delivery.content,
    routingKey: delivery.fields.routingKey,
    redelivered: delivery.fields.redelivered,
    headers: typeof headers === 'object' && headers !== null ? ownHeaders(headers) : undefined,
    delivery,
    error,
  };
}

/**
 * Runs the handler once with its timeout; resolves with its result, its error (a throw, a rejection or the
 * timeout) or `abandoned` (a forced stop). The handler is called directly: no promise for a handler that
 * returns a plain value.
 */
export function runHandler(
  owner: RunOwner,
  handler: ResolvedHandler,
  message: HandlerMessage,
  source: DeliverySource,
  stopSignal: AbortSignal | undefined,
): Promise<RunResult> {
  const { clock, logger, context } = owner;
  const { attempt } = message;
  const timeoutSeconds = handler.policy.timeout;
  return new Promise<RunResult>((resolve) => {
    const run = new HandlerRun(owner, stopSignal, resolve, attempt);
    run.timer = clock.setTimeout(
      () => {
        const error = new HandlerTimeoutError(timeoutSeconds, source.queue, message.uuid);
        if (run.finish({ kind: 'error', error })) {
          logger.warn({ ...context, attempt }, error.message);
          run.abort(error);
        }
      },
      Math.min(timeoutSeconds * 1000, MAX_TIMER_MS),
    );
    if (stopSignal !== undefined) watchStop(stopSignal, run);
    // A throw counts as a failure.
    let result: unknown;
    try {
      result = handler.process(message, new RunContext(run, attempt, source, logger));
    } catch (error) {
      run.failed(error);
      return;
    }
    if (isThenable(result)) {
      try {
        result.then(
          (value) => run.succeeded(value),
          (error: unknown) => run.failed(error),
        );
      } catch (error) {
        run.failed(error); // a thenable whose then() throws
      }
    } else {
      run.succeeded(result);
    }
  });
}

/**
 * The handler runs listening on each stop signal. One 'abort' listener per signal serves all its runs:
 * adding and removing an EventTarget listener for every handler run cost more than the run's other
 * bookkeeping together.
 */
const runsByStopSignal = new WeakMap<AbortSignal, Set<HandlerRun>>();

function watchStop(signal: AbortSignal, run: HandlerRun): void {
  let runs = runsByStopSignal.get(signal);
  if (runs === undefined) {
    const watched = new Set<HandlerRun>();
    runs = watched;
    runsByStopSignal.set(signal, watched);
    signal.addEventListener(
      'abort',
      () => {
        for (const stopped of [...watched]) stopped.stop();
      },
      { once: true },
    );
  }
  runs.add(run);
}

/**
 * The state of one handler run: settles it once (result, timeout or forced stop) and is the stop signal's
 * watcher. Its abort signal is created on first use: most handlers never look at it, and an
 * `AbortController` per delivery is costly. Aborting before the handler asked for the signal aborts it as
 * soon as it is created, with the same reason, so the handler cannot tell the difference.
 */
class HandlerRun {
  timer: TimerHandle;
  private done = false;
  private controller: AbortController | undefined;
  private aborted = false;
  private reason: unknown;

  constructor(
    private readonly owner: RunOwner,
    private readonly stopSignal: AbortSignal | undefined,
    private readonly resolve: (result: RunResult) => void,
    private readonly attempt: number,
  ) {}

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }

  /** Settles the run; false if it was settled already. */
  finish(result: RunResult): boolean {
    if (this.done) return false;
    this.done = true;
    this.owner.clock.clearTimeout(this.timer);
    if (this.stopSignal !== undefined) runsByStopSignal.get(this.stopSignal)?.delete(this);
    this.resolve(result);
    return true;
  }

  succeeded(value: unknown): void {
    if (!this.finish({ kind: 'ok', value })) {
      const { logger, context } = this.owner;
      logger.warn(
        { ...context, attempt: this.attempt },
        'handler finished after its timeout; result ignored',
      );
    }
  }

  failed(error: unknown): void {
    if (!this.finish({ kind: 'error', error })) {
      const { logger, context } = this.owner;
      logger.warn(
        { ...context, attempt: this.attempt, err: error },
        'handler failed after its timeout; ignored',
      );
    }
  }

  /** The stop signal fired (forced stop): the delivery is abandoned. */
  stop(): void {
    if (this.finish({ kind: 'abandoned' })) this.abort(new SubscriberStoppedError());
  }
}

/** What a handler gets besides the message (a class: cheaper to create than a literal with a getter). */
class RunContext implements HandlerContext {
  readonly server: string;
  readonly queue: string;

  constructor(
    private readonly run: HandlerRun,
    readonly attempt: number,
    source: DeliverySource,
    readonly logger: Logger,
  ) {
    this.server = source.server;
    this.queue = source.queue;
  }

  get signal(): AbortSignal {
    return this.run.signal;
  }
}

const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
