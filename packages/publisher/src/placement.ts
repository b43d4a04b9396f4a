import { randomUUID } from 'node:crypto';
import {
  BrokerError,
  InvalidPublishError,
  NoMessageSentError,
  type BeetleConfig,
  type Logger,
  type MessageDefinition,
} from '@beetle/core';
import type { Clock } from '@beetle/core/kit';
import { prepareMessage, withoutRedundantFlag, type BrokerTarget, type Prepared } from './broker-target.js';
import type { Rotation } from './rotation.js';
import type { Throttle } from './throttle.js';
import type { PlacementOptions, PublisherEmitter } from './types.js';

/** Where a publish went: the brokers that confirmed it, in the order they did (1, or 2 when redundant). */
export interface Placed {
  readonly prepared: Prepared;
  readonly servers: string[];
  /** Placed as a redundant message (flags "1"); with one server that is a partial publish. */
  readonly redundant: boolean;
  /** What the failed attempts failed with. */
  readonly errors: readonly unknown[];
}

export interface PlacementContext {
  readonly config: BeetleConfig;
  readonly targets: ReadonlyMap<string, BrokerTarget>;
  readonly rotation: Rotation;
  readonly throttle: Throttle;
  readonly events: PublisherEmitter;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Unix seconds for `timestamp` / `expires_at` (tests inject it). */
  readonly now: (() => number) | undefined;
}

/** How one message is placed by `tryOn`: what an attempt does, where to go on, which failures end it. */
interface Trial {
  readonly name: string;
  readonly messageId: string;
  readonly attempt: (target: BrokerTarget) => Promise<void>;
  /** The broker to go on with after one failed twice (undefined: none left). */
  readonly next: () => string | undefined;
  /** A redundant copy: one whose outcome is unknown is never placed again. */
  readonly copy: boolean;
}

const NO_ERRORS: readonly unknown[] = Object.freeze([]);

/**
 * Where a publish goes (Ruby's `publish_with_failover` and `publish_with_redundancy`, with confirms): the
 * fast path when nothing needs waiting for, else the slow path with failover, the redundant pair and the
 * recovery of a failed copy, all on one retry loop (`tryOn`). The publisher reports what it returns.
 */
export class Placement {
  constructor(private readonly context: PlacementContext) {}

  /**
   * The common case without extra awaits: not throttled, no dead broker, channels open and exchange prepared.
   * Anything else (and any failure) continues on the slow path.
   */
  place(
    definition: MessageDefinition,
    payload: unknown,
    options: PlacementOptions,
    deadline: number,
  ): Promise<Placed> {
    const { rotation } = this.context;
    if (this.context.throttle.throttled || rotation.hasDead) {
      return this.placeSlow(definition, payload, options, deadline);
    }
    const messageId = options.messageId ?? randomUUID();
    if (!(options.redundant ?? definition.redundant)) {
      const prepared = prepareMessage(definition, payload, options, messageId, false, this.context);
      const server = rotation.next();
      if (server === undefined) return this.placeSlow(definition, payload, options, deadline, prepared);
      return this.target(server)
        .send(prepared)
        .then(
          (): Placed => {
            rotation.succeeded(server);
            return { prepared, servers: [server], redundant: false, errors: NO_ERRORS };
          },
          (error: unknown) => this.continueFailover(prepared, deadline, error, server),
        );
    }
    const prepared = prepareMessage(definition, payload, options, messageId, true, this.context);
    if (rotation.liveCount < 2) return this.placeSlow(definition, payload, options, deadline, prepared);
    const first = rotation.next() as string;
    const second = rotation.next(new Set([first]));
    if (second === undefined) return this.placeSlow(definition, payload, options, deadline, prepared);
    const a = this.target(first);
    const b = this.target(second);
    if (!a.isReady(definition.exchange) || !b.isReady(definition.exchange)) {
      return this.placeSlow(definition, payload, options, deadline, prepared);
    }
    const copies = [a.send(prepared), b.send(prepared)];
    return Promise.all(copies).then(
      (): Placed => {
        rotation.succeeded(first);
        rotation.succeeded(second);
        return { prepared, servers: [first, second], redundant: true, errors: NO_ERRORS };
      },
      () => this.recoverRedundant(prepared, [first, second], copies, deadline),
    );
  }

  private async placeSlow(
    definition: MessageDefinition,
    payload: unknown,
    options: PlacementOptions,
    deadline: number,
    validated?: Prepared,
  ): Promise<Placed> {
    const { rotation, logger } = this.context;
    let redundant = options.redundant ?? definition.redundant;
    // Bad input is refused before any waiting or connecting (prepare throws InvalidPublishError).
    const messageId = validated?.message.properties.messageId ?? options.messageId ?? randomUUID();
    let prepared =
      validated ?? prepareMessage(definition, payload, options, messageId, redundant, this.context);
    if (this.context.throttle.throttled) await this.context.throttle.wait(deadline);
    rotation.recycleDeadServers();
    const name = definition.name;
    const errors: unknown[] = [];
    if (redundant && rotation.liveCount < 2) {
      if (rotation.hasDead) {
        logger.warn(
          { message: name, live: rotation.liveServers(), dead: rotation.deadServers() },
          `fewer than two brokers alive: publishing ${name} once, not redundantly`,
        );
      }
      redundant = false;
    }
    let pair: string[] = [];
    if (redundant) {
      // Both brokers are made ready (connected, exchange prepared) BEFORE the flags are fixed: a broker that is
      // down is found out before any copy went out flagged "1" (Ruby sends the first copy flagged anyway).
      pair = await this.readyPair(prepared, deadline, errors);
      if (pair.length < 2) {
        logger.warn(
          { message: name, messageId, ready: pair, errors },
          `only ${pair.length} broker(s) reachable: publishing ${name} once, not redundantly`,
        );
        redundant = false;
      }
    }
    if (!redundant) {
      prepared = withoutRedundantFlag(prepared);
      const first = this.context.clock.nowMs() < deadline ? rotation.next() : undefined;
      return this.failover(prepared, first, 1, deadline, errors);
    }
    const used = new Set(pair);
    const placed: string[] = [];
    const trial = this.copyTrial(prepared, used);
    await Promise.all(pair.map((server) => this.placeCopy(trial, server, 1, placed, deadline, errors)));
    return this.redundantResult(prepared, placed, errors);
  }

  /** The fast path's single attempt failed: on with the same broker's second attempt, then failover. */
  private async continueFailover(
    prepared: Prepared,
    deadline: number,
    error: unknown,
    server: string,
  ): Promise<Placed> {
    if (error instanceof InvalidPublishError) throw error;
    const errors: unknown[] = [];
    this.failed(this.failoverTrial(prepared), server, error, 1, errors);
    return this.failover(prepared, server, 2, deadline, errors);
  }

  /** Ruby `publish_with_failover`: the same broker once more, then the next, 2 attempts for each broker. */
  private async failover(
    prepared: Prepared,
    first: string | undefined,
    fromAttempt: 1 | 2,
    deadline: number,
    errors: unknown[],
  ): Promise<Placed> {
    const server =
      first === undefined
        ? undefined
        : await this.tryOn(first, fromAttempt, deadline, errors, this.failoverTrial(prepared));
    if (server === undefined) {
      throw (
        errors.find((e) => e instanceof InvalidPublishError) ?? new NoMessageSentError(prepared.name, errors)
      );
    }
    this.context.rotation.succeeded(server);
    return { prepared, servers: [server], redundant: false, errors };
  }

  /** A copy of the fast path failed: placed again elsewhere, unless its outcome is unknown or the input bad. */
  private async recoverRedundant(
    prepared: Prepared,
    pair: readonly string[],
    copies: readonly Promise<void>[],
    deadline: number,
  ): Promise<Placed> {
    const errors: unknown[] = [];
    const placed: string[] = [];
    const trial = this.copyTrial(prepared, new Set(pair));
    const outcomes = await Promise.allSettled(copies);
    await Promise.all(
      pair.map((server, i) => {
        const outcome = outcomes[i];
        if (outcome?.status === 'fulfilled') {
          this.context.rotation.succeeded(server);
          placed.push(server);
          return Promise.resolve();
        }
        if (!this.failed(trial, server, outcome?.reason, 1, errors)) return Promise.resolve();
        return this.placeCopy(trial, server, 2, placed, deadline, errors);
      }),
    );
    return this.redundantResult(prepared, placed, errors);
  }

  private redundantResult(prepared: Prepared, servers: string[], errors: unknown[]): Placed {
    if (servers.length === 0) {
      throw (
        errors.find((e) => e instanceof InvalidPublishError) ?? new NoMessageSentError(prepared.name, errors)
      );
    }
    return { prepared, servers, redundant: true, errors };
  }

  /** Two distinct brokers with an open publish channel and the exchange prepared (fewer if not possible). */
  private readyPair(prepared: Prepared, deadline: number, errors: unknown[]): string[] | Promise<string[]> {
    const { rotation } = this.context;
    const { exchange } = prepared;
    const used = new Set<string>();
    const first = rotation.next(used);
    if (first !== undefined) used.add(first);
    const second = rotation.next(used);
    if (second !== undefined) used.add(second);
    if (
      first !== undefined &&
      second !== undefined &&
      this.target(first).isReady(exchange) &&
      this.target(second).isReady(exchange)
    ) {
      return [first, second];
    }
    const trial: Trial = {
      name: prepared.name,
      messageId: prepared.message.properties.messageId,
      attempt: (target) => target.prepare(exchange),
      next: () => nextUnused(rotation, used),
      copy: false,
    };
    const ready: string[] = [];
    const readyOne = async (candidate: string | undefined): Promise<void> => {
      if (candidate === undefined) return;
      const server = await this.tryOn(candidate, 1, deadline, errors, trial);
      if (server !== undefined) ready.push(server);
    };
    return Promise.all([readyOne(first), readyOne(second)]).then(() => ready);
  }

  /** One copy of a redundant message: on `first` (from `fromAttempt`), then on brokers not used yet. */
  private async placeCopy(
    trial: Trial,
    first: string,
    fromAttempt: 1 | 2,
    placed: string[],
    deadline: number,
    errors: unknown[],
  ): Promise<void> {
    const server = await this.tryOn(first, fromAttempt, deadline, errors, trial);
    if (server === undefined) return;
    this.context.rotation.succeeded(server);
    placed.push(server);
  }

  /**
   * The one retry loop: up to 2 attempts on a broker (the second failure marks it dead), then the broker
   * `trial.next()` gives, until an attempt succeeds (its broker is returned), a failure ends the trial, no
   * broker is left or the deadline has passed (undefined). Every failure is in `errors`.
   */
  private async tryOn(
    first: string,
    fromAttempt: 1 | 2,
    deadline: number,
    errors: unknown[],
    trial: Trial,
  ): Promise<string | undefined> {
    const { clock } = this.context;
    let server: string | undefined = first;
    let attempt = fromAttempt;
    while (server !== undefined && clock.nowMs() < deadline) {
      try {
        await trial.attempt(this.target(server));
        return server;
      } catch (error) {
        if (!this.failed(trial, server, error, attempt, errors)) return undefined;
      }
      if (attempt === 1) {
        attempt = 2;
      } else if (clock.nowMs() < deadline) {
        attempt = 1;
        server = trial.next();
      }
    }
    return undefined;
  }

  /** Records a failed attempt; whether the trial goes on. */
  private failed(trial: Trial, server: string, error: unknown, attempt: 1 | 2, errors: unknown[]): boolean {
    errors.push(error);
    // The caller's input: no broker to blame or retry.
    if (error instanceof InvalidPublishError) return false;
    const { name, messageId } = trial;
    const { logger, events, rotation } = this.context;
    logger.warn(
      { message: name, messageId, server, err: error },
      `publishing ${name} to ${server} failed: ${error instanceof Error ? error.message : String(error)}`,
    );
    // Like Ruby's `stop!`: forget what was declared there, so the next attempt declares again.
    this.target(server).forget();
    events.emit('failover', { message: name, messageId, server, error });
    if (attempt === 2) rotation.markDead(server, error);
    if (trial.copy && error instanceof BrokerError && error.outcomeUnknown) {
      // The broker may hold the copy already. Placing it again, there or elsewhere, could make a third copy,
      // which consumers would handle again once the keys of the first two are gone.
      logger.warn(
        { message: name, messageId, server },
        `copy of ${name} on ${server} has an unknown outcome; not placing it again`,
      );
      return false;
    }
    return true;
  }

  private failoverTrial(prepared: Prepared): Trial {
    // Two attempts for each configured broker at most, the first broker included.
    let brokersLeft = this.context.config.servers.length - 1;
    return {
      name: prepared.name,
      messageId: prepared.message.properties.messageId,
      attempt: (target) => target.send(prepared),
      next: () => (brokersLeft-- > 0 ? this.context.rotation.next() : undefined),
      copy: false,
    };
  }

  private copyTrial(prepared: Prepared, used: Set<string>): Trial {
    return {
      name: prepared.name,
      messageId: prepared.message.properties.messageId,
      attempt: (target) => target.send(prepared),
      next: () => nextUnused(this.context.rotation, used),
      copy: true,
    };
  }

  private target(server: string): BrokerTarget {
    return this.context.targets.get(server) as BrokerTarget;
  }
}

function nextUnused(rotation: Rotation, used: Set<string>): string | undefined {
  const server = rotation.next(used);
  if (server !== undefined) used.add(server);
  return server;
}
