// Over 400 lines: `processDelivery`'s public contract (params, result, copy knowledge) sits with the machine.
/**
 * Beetle's processing state machine for one delivery (Ruby's `Message#process`), step for step, with the
 * handler hooks in Ruby's order. The broker is behind `DeliverySettler`, other copies of the message behind
 * `CopyKnowledge`, the handler run behind `runHandler`. Outside this file only `delivery.ts` calls the store,
 * for what outlives a delivery: ack counts handed over between copies, and abandoned runs.
 */
import {
  ClosedError,
  InvariantError,
  Outcome,
  isFailureOutcome,
  isRejectOutcome,
  silentLogger,
  type DecodeResult,
  type DedupStore,
  type DeliveryObservation,
  type DeliverySource,
  type Logger,
  type MessageRef,
  type RawDelivery,
} from '@beetle/core';
import {
  type Clock,
  decodeMessage,
  isExpired,
  isSimple,
  systemClock,
  TIMEOUT_GRACE_PERIOD,
  timeoutAt,
} from '@beetle/core/kit';
import {
  isRetriable,
  type AnyMessage,
  type HandlerMessage,
  type ResolvedHandler,
  type UndecodedMessage,
} from './handler.js';
import {
  handlerMessage,
  runHandler,
  undecodedMessage,
  type MutableHandlerMessage,
  type RunOwner,
  type RunResult,
} from './handler-run.js';
import { observedStore } from './observed-store.js';
import { OnceSettler, replyBody, type DeliverySettler, type SettleState } from './settle.js';

export interface ProcessParams {
  readonly delivery: RawDelivery;
  /** AMQP queue name and broker of the delivery. */
  readonly source: DeliverySource;
  readonly handler: ResolvedHandler;
  readonly store: DedupStore;
  readonly settler: DeliverySettler;
  readonly clock?: Clock;
  readonly logger?: Logger;
  /**
   * Aborted on a forced stop: a running handler's signal is aborted and the delivery abandoned (neither
   * settled nor recorded in the store), so the broker redelivers it once the channel closes.
   */
  readonly stopSignal?: AbortSignal;
  /**
   * `decodeMessage(delivery, source)` when the caller has decoded the delivery already (saves decoding it
   * twice); must be the result for this `delivery` and `source`.
   */
  readonly decoded?: DecodeResult;
  /**
   * What the caller knows about other copies of this message in this process (the subscriber's line of
   * copies): lets a copy skip the claim when an earlier copy here completed the message, and record the acks
   * of both copies in one store call.
   */
  readonly copy?: CopyKnowledge;
  /**
   * A telemetry's observation of this delivery (see `Telemetry.delivery`): store steps and the handler are
   * reported to it, and the handler runs inside it. The caller ends it with the result.
   */
  readonly observation?: DeliveryObservation;
}

/**
 * Knowledge about the other copies of a message in this process (implemented by the subscriber's line of
 * copies; absent, every copy goes through the store).
 */
export interface CopyKnowledge {
  /** The store has this message completed (an earlier copy here saw or made it so): skip the claim, ack. */
  readonly knownCompleted: boolean;
  /** Acks of earlier copies not recorded in the store yet, to record with this copy's (resets the count). */
  takeInheritedAcks(): number;
  /**
   * This copy was acked and the message is completed: returns true when this process takes over recording
   * these `acks` acks (a later copy waiting here records them with its own, or, when `handlerRan` here, they
   * are held for the other copy, expected soon), false when the caller must record them now.
   */
  completed(acks: number, handlerRan: boolean): boolean;
}

/** A run the store counted whose handler was abandoned by a forced stop (see `DedupStore.release`). */
export interface AbandonedRun {
  readonly ref: MessageRef;
  /** The attempt number the store gave the run. */
  readonly attempts: number;
}

export interface ProcessResult {
  /** `undefined` when the delivery was abandoned by a forced stop. */
  readonly outcome: Outcome | undefined;
  readonly abandoned: boolean;
  /**
   * When a running handler was abandoned: its run as the store counted it, for the caller to give back with
   * `store.release` (the subscriber does, before it closes its channels), so that the redelivery runs at
   * once instead of after the handler timeout.
   */
  readonly abandonedRun?: AbandonedRun;
  /** The decoded message (undefined when decoding failed). */
  readonly message: HandlerMessage | undefined;
  readonly settled: SettleState;
  /** The decode, pre-process or handler error, or the internal error behind `InternalError`. */
  readonly error: unknown;
  readonly handlerCalled: boolean;
  /** What the handler returned (the RPC reply body). */
  readonly handlerResult: unknown;
}

/**
 * Runs one delivery through Beetle's processing state machine (Ruby's `process_internal`, step for step) and
 * the handler hooks in Ruby's order. Never throws: anything escaping becomes `InternalError`.
 */
export function processDelivery(params: ProcessParams): Promise<ProcessResult> {
  return new Processing(params).run();
}

/** The processing of one delivery (the owner of its handler runs). */
class Processing implements RunOwner {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly context: Record<string, unknown>;
  private readonly settle: OnceSettler;
  private readonly store: DedupStore;
  private message: MutableHandlerMessage | undefined;
  private undecoded: UndecodedMessage | undefined;
  /** The exception for the `error` hook (Ruby `@exception || @pre_exception`). */
  private exception: { readonly error: unknown } | undefined;
  private handlerCalled = false;
  private handlerResult: unknown;
  /** When the message is ready again, for a not-ready outcome whose time the store told (`RejectReason`). */
  private readyAt: number | undefined;
  private abandonedRun: AbandonedRun | undefined;

  constructor(private readonly params: ProcessParams) {
    this.clock = params.clock ?? systemClock;
    this.logger = params.logger ?? silentLogger;
    this.store =
      params.observation === undefined
        ? params.store
        : observedStore(params.store, params.observation, this.logger);
    const messageId = params.delivery.properties.messageId;
    this.context = {
      queue: params.source.queue,
      server: params.source.server,
      uuid: typeof messageId === 'string' ? messageId : undefined,
    };
    this.settle = new OnceSettler(params.settler, this.logger, this.context);
  }

  async run(): Promise<ProcessResult> {
    const { handler, delivery, source } = this.params;
    const decoded = this.params.decoded ?? decodeMessage(delivery, source);
    let preError: { readonly error: unknown } | undefined;
    if (decoded.ok) {
      const message = handlerMessage(decoded.message);
      this.message = message;
      if (handler.preProcess !== undefined) {
        try {
          await handler.preProcess(message);
        } catch (error) {
          preError = { error };
        }
      }
    } else {
      this.undecoded = undecodedMessage(delivery, source, decoded.error);
    }

    let outcome: Outcome | undefined;
    let internalError: { readonly error: unknown } | undefined;
    try {
      outcome = await this.machine(preError);
    } catch (error) {
      outcome = Outcome.InternalError;
      internalError = { error };
      this.logger.error(
        { ...this.context, err: error, settled: this.settle.state },
        'internal error while processing a message',
      );
    }

    if (outcome === undefined) {
      this.logger.warn(this.context, 'subscriber stopped while the handler was running; left for redelivery');
      return this.result(undefined, undefined);
    }

    const callbackMessage: AnyMessage | undefined = this.message ?? this.undecoded;
    if (internalError === undefined && callbackMessage !== undefined) {
      const exception = this.exception;
      if (exception !== undefined) {
        await this.hook(
          'error',
          handler.onError && (() => handler.onError?.(exception.error, callbackMessage)),
        );
      }
      if (isFailureOutcome(outcome)) {
        const final = outcome;
        await this.hook('failure', handler.onFailure && (() => handler.onFailure?.(final, callbackMessage)));
      }
    }

    if (isRejectOutcome(outcome)) {
      // After an ack (e.g. a store error in `acknowledged`) there is nothing left to hand back.
      if (this.settle.state === 'pending') this.settle.reject({ outcome, readyAt: this.readyAt });
    } else if (this.replyTo() !== undefined) {
      await this.reply(outcome);
    }

    // Hooks the handler does not have are skipped without an await (no promise per delivery for nothing).
    const message = this.message;
    if (this.handlerCalled && message !== undefined && handler.completed !== undefined) {
      await this.hook('completed', () => handler.completed?.(message));
    }
    if (callbackMessage !== undefined && handler.postProcess !== undefined) {
      await this.hook('postProcess', () => handler.postProcess?.(callbackMessage));
    }
    return this.result(outcome, internalError?.error ?? this.exception?.error);
  }

  private result(outcome: Outcome | undefined, error: unknown): ProcessResult {
    return {
      outcome,
      abandoned: outcome === undefined,
      abandonedRun: this.abandonedRun,
      message: this.message,
      settled: this.settle.state,
      error,
      handlerCalled: this.handlerCalled,
      handlerResult: this.handlerResult,
    };
  }

  /** Reference §4.4 `process_internal`, in its exact order. `undefined` = abandoned by a forced stop. */
  private async machine(preError: { readonly error: unknown } | undefined): Promise<Outcome | undefined> {
    const { handler } = this.params;
    const store = this.store;
    const message = this.message;
    // 1. Decoding failed.
    if (message === undefined) {
      this.exception = this.undecoded && { error: this.undecoded.error };
      this.settle.ack();
      return Outcome.DecodingError;
    }
    // 2. preProcess threw.
    if (preError !== undefined) {
      this.exception = preError;
      this.settle.ack();
      return Outcome.PreprocessingError;
    }
    const now = this.clock.now();
    // 3. Expired: acked, handler not run, no callbacks.
    if (isExpired(message, now)) {
      this.logger.warn({ ...this.context, expiresAt: message.expiresAt }, 'ignored expired message');
      this.settle.ack();
      return Outcome.Ancient;
    }
    // A forced stop before the store is touched: leave the message as it is, for redelivery.
    if (this.params.stopSignal?.aborted) return undefined;
    const policy = handler.policy;
    const ref: MessageRef = { queue: this.params.source.queue, uuid: message.uuid };
    // 4. Simple fast path: ack first (at most once), then run unless a recent duplicate.
    if (isSimple(message.redundant, policy)) {
      if (!this.settle.ack()) {
        // The broker will redeliver it: running it now could run it twice.
        throw new ClosedError('could not ack a simple message (channel closed); left for redelivery');
      }
      if (!(await store.markCompletedIfNew(ref))) {
        this.logger.debug(this.context, 'duplicate of a recently completed message; handler not run');
        return Outcome.OK;
      }
      const run = await this.runHandler(1);
      if (run.kind === 'abandoned') return undefined;
      if (run.kind === 'ok') {
        this.handlerResult = run.value;
        return Outcome.OK;
      }
      this.exception = { error: run.error };
      return Outcome.AttemptsLimitReached;
    }
    // 5a. An earlier copy in this process completed the message (or saw it completed): the claim would report
    //     `completed`, so go straight to step 6's first case.
    if (this.params.copy?.knownCompleted === true) {
      await this.ackAndForget(ref);
      return Outcome.OK;
    }
    // 5. First sighting: the message is ours. Timeouts, delays and the mutex's age are decided with the
    //    store's clock where it has one (`timeout`), so that consumers with skewed clocks agree.
    const claim = await store.claim(ref, {
      expiresAt: message.expiresAt,
      timeoutAt: timeoutAt(now, policy),
      timeout: policy.timeout,
    });
    if (claim.first) return this.runAndRecord(ref, claim.attempts);
    // 6. Seen before.
    const { state } = claim;
    if (state.status === 'completed') {
      await this.ackAndForget(ref);
      return Outcome.OK;
    }
    // Decided on the store's clock; the time until ready is carried over to this process' clock (readyAt).
    const storeNow = claim.now ?? now;
    if (state.delay !== undefined && state.delay > storeNow) {
      this.readyAt = now + (state.delay - storeNow);
      return Outcome.Delayed;
    }
    // Unlike Ruby (weak spot 5), a missing timeout key counts as timed out, so the message cannot get stuck.
    if (state.timeout !== undefined && state.timeout + TIMEOUT_GRACE_PERIOD >= storeNow) {
      this.readyAt = now + (state.timeout + TIMEOUT_GRACE_PERIOD + 1 - storeNow);
      return Outcome.HandlerNotYetTimedOut;
    }
    const completion = { expiresAt: message.expiresAt };
    if (state.attempts >= policy.attemptsLimit) {
      await store.complete(ref, completion);
      await this.ackAndForget(ref);
      return Outcome.AttemptsLimitReached;
    }
    if (state.exceptions > policy.exceptionsLimit) {
      await store.complete(ref, completion);
      await this.ackAndForget(ref);
      return Outcome.ExceptionsLimitReached;
    }
    const acquired = await store.acquire(ref, {
      now,
      timeoutAt: timeoutAt(now, policy),
      staleAfter: policy.timeout + TIMEOUT_GRACE_PERIOD,
      timeout: policy.timeout,
    });
    if (!acquired.acquired) return Outcome.MutexLocked;
    return this.runAndRecord(ref, acquired.attempts);
  }

  /** Ruby `run_handler!`: run, then complete → ack → acknowledged, or record the failure. */
  private async runAndRecord(ref: MessageRef, attempts: number): Promise<Outcome | undefined> {
    const { handler } = this.params;
    const store = this.store;
    const run = await this.runHandler(attempts);
    if (run.kind === 'abandoned') {
      // Counted by the store but never finished: the caller gives it back (see ProcessResult.abandonedRun).
      this.abandonedRun = { ref, attempts };
      return undefined;
    }
    // Written with the completion: keys recreated after a garbage collection stay collectable.
    const expiresAt = this.message?.expiresAt;
    if (run.kind === 'ok') {
      this.handlerResult = run.value;
      await store.complete(ref, { expiresAt });
      await this.ackAndForget(ref);
      return Outcome.OK;
    }
    this.exception = { error: run.error };
    const { policy } = handler;
    const failed = await store.fail(ref, {
      now: this.clock.now(),
      storeClock: true,
      attemptsLimit: policy.attemptsLimit,
      exceptionsLimit: policy.exceptionsLimit,
      accepted: this.accepts(run.error),
      delay: policy.delay,
      maxDelay: policy.maxDelay,
      expiresAt,
    });
    if (failed.outcome === Outcome.HandlerCrash) {
      this.logger.warn(
        { ...this.context, err: run.error, attempts: failed.attempts, delayUntil: failed.delayUntil },
        'handler crashed; will retry',
      );
      return Outcome.HandlerCrash;
    }
    // The store has already completed the message.
    await this.ackAndForget(ref);
    return failed.outcome;
  }

  /**
   * Broker ack, then let the store count the ack and forget the message; keys stay if the ack did not reach
   * the broker. A copy of a redundant message waiting in this process may take the count over, so that both
   * acks are recorded in one call once both deliveries are acked.
   */
  private async ackAndForget(ref: MessageRef): Promise<void> {
    const redundant = this.message?.redundant ?? false;
    const copy = this.params.copy;
    const acked = this.settle.ack();
    if (!acked) {
      this.logger.warn(this.context, 'ack did not reach the broker; dedup keys kept for the redelivery');
    }
    const acks = (acked ? 1 : 0) + (copy?.takeInheritedAcks() ?? 0);
    if (acks === 0) return;
    if (redundant && acked && copy?.completed(acks, this.handlerCalled) === true) return;
    await this.store.acknowledged(ref, { redundant, acks });
  }

  private accepts(error: unknown): boolean {
    try {
      return isRetriable(this.params.handler.retryOn, error);
    } catch (predicateError) {
      this.logger.error({ ...this.context, err: predicateError }, 'retryOn predicate threw; not retrying');
      return false;
    }
  }

  /** Runs the handler for `attempt` (see `runHandler`); `abandoned` at once after a forced stop. */
  private runHandler(attempt: number): Promise<RunResult> {
    const message = this.message;
    if (message === undefined) throw new InvariantError('runHandler without a decoded message');
    const { handler, stopSignal, source } = this.params;
    if (stopSignal?.aborted) return Promise.resolve({ kind: 'abandoned' });
    message.attempt = attempt;
    this.handlerCalled = true;
    const observation = this.params.observation;
    if (observation === undefined) return runHandler(this, handler, message, source, stopSignal);
    return this.runObserved(observation, () => runHandler(this, handler, message, source, stopSignal));
  }

  /** The handler inside the observation (its spans nest there), its run time reported when it ends. */
  private async runObserved(
    observation: DeliveryObservation,
    run: () => Promise<RunResult>,
  ): Promise<RunResult> {
    const started = performance.now();
    let running: Promise<RunResult> | undefined;
    try {
      // The promise it returns is `running`, awaited below (runHandler never rejects).
      void observation.run(() => (running = run()));
    } catch (error) {
      this.logger.error({ ...this.context, err: error }, 'telemetry observer threw; ignored');
    }
    // An observer that threw before calling back: the handler runs without it (never twice).
    const ended = await (running ?? run());
    try {
      observation.handled(performance.now() - started, ended.kind === 'error' ? ended.error : undefined);
    } catch (error) {
      this.logger.error({ ...this.context, err: error }, 'telemetry observer threw; ignored');
    }
    return ended;
  }

  /** Where the RPC reply goes; undefined when the message wants none. */
  private replyTo(): string | undefined {
    const replyTo = this.message?.replyTo ?? this.params.delivery.properties.replyTo;
    return typeof replyTo === 'string' && replyTo !== '' ? replyTo : undefined;
  }

  private async reply(outcome: Outcome): Promise<void> {
    const replyTo = this.replyTo();
    if (replyTo === undefined) return;
    try {
      await this.params.settler.reply(replyTo, replyBody(this.handlerResult), {
        status: outcome === Outcome.OK ? 'OK' : 'FAILED',
      });
    } catch (error) {
      this.logger.error({ ...this.context, err: error, replyTo }, 'could not publish the RPC reply');
    }
  }

  private async hook(name: string, call: (() => unknown) | undefined): Promise<void> {
    if (call === undefined) return;
    try {
      await call();
    } catch (error) {
      this.logger.error({ ...this.context, err: error, hook: name }, 'handler hook failed');
    }
  }
}
