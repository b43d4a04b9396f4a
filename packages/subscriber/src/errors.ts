import { BeetleError } from '@beetle/core';

/** A handler ran longer than its `timeout`: the attempt counts as crashed and its signal is aborted. */
export class HandlerTimeoutError extends BeetleError {
  constructor(
    readonly timeoutSeconds: number,
    readonly queue: string,
    readonly uuid: string,
  ) {
    super('timeout', `handler for message ${uuid} on queue ${queue} timed out after ${timeoutSeconds}s`);
  }
}

/** The subscriber is stopping: the handler's delivery is left unacked for redelivery. */
export class SubscriberStoppedError extends BeetleError {
  constructor(message = 'subscriber stopped before the handler finished') {
    super('closed', message);
  }
}

/**
 * The broker cancelled the consumer of a queue (basic.cancel, e.g. the queue was deleted). Reported in an
 * `error` event (phase `consume`); the subscriber sets the queue up again and consumes it again.
 */
export class ConsumerCancelledError extends BeetleError {
  constructor(
    readonly server: string,
    /** Registered (logical) queue name. */
    readonly queue: string,
    amqpName: string,
  ) {
    super('broker-closed', `consumer of ${amqpName} on ${server} cancelled by the broker (queue deleted?)`);
  }
}
