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
