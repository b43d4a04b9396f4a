import type { Socket } from 'node:net';
import type { Channel, ChannelModel } from 'amqplib';
import { BrokerError } from '@beetle/core';
import { errorMessage, toError, withTimeout } from '@beetle/core/kit';
import type { ConnectionRole } from './types.js';

/** One AMQP connection of a `BrokerConnection`: what its channels need to know about it and do with it. */
export interface Link {
  readonly role: ConnectionRole;
  readonly server: string;
  readonly model: ChannelModel;
  /** Bound of every round trip on this connection, in seconds (`BrokerOptions.operationTimeout`). */
  readonly operationTimeout: number;
  /** Flow control: the broker stopped reading from this connection (resource alarm). */
  blocked: boolean;
  dead: boolean;
  /** Woken by `unblocked` and by the loss of the connection. */
  readonly unblockWaiters: Set<() => void>;
  /** Channels open on this connection, closed one by one before the connection itself (see `close`). */
  readonly channels: Set<Channel>;
  /** Writes channels hold back (a consumer channel's batched acks), made before the channels close. */
  readonly heldWrites: Set<() => void>;
  /** Treats the connection as dead (e.g. after a timeout): destroys the socket and runs the loss handling now. */
  readonly kill: (error: Error) => void;
}

export function socketOf(model: ChannelModel): Socket | undefined {
  return (model.connection as unknown as { stream?: Socket }).stream;
}

/** Reasons amqplib reports for refused logins. */
export const isAuthFailure = (message: string): boolean =>
  /ACCESS[-_]REFUSED|403|authentication|login/i.test(message);

/**
 * One broker round trip on `link`, bounded by its operation timeout: a broker that does not answer in time
 * gets its connection killed (a later call reconnects). Every failure is a `BrokerError`.
 */
export function roundTrip<T>(link: Link, what: string, run: () => Promise<T>): Promise<T> {
  let promise: Promise<T>;
  try {
    promise = run();
  } catch (error) {
    promise = Promise.reject(toError(error));
  }
  return withTimeout(promise, link.operationTimeout * 1000, () => {
    const error = new BrokerError(
      'broker-timeout',
      link.server,
      `${what} timed out after ${link.operationTimeout}s`,
    );
    link.kill(error);
    return error;
  }).catch((error: unknown) => {
    if (error instanceof BrokerError) throw error;
    throw new BrokerError('broker-closed', link.server, `${what} failed: ${errorMessage(error)}`, {
      cause: error,
    });
  });
}

/** A channel's write buffer: full once amqplib's `publish` returned false, until the channel's `drain`. */
export class WriteBuffer {
  full = false;
  /** Woken by `drain` and by the close of the channel. */
  readonly waiters = new Set<() => void>();

  drained(): void {
    this.full = false;
    this.wake();
  }

  wake(): void {
    for (const wake of this.waiters) wake();
    this.waiters.clear();
  }
}

/**
 * Waits until `link` is not blocked and `buffer` is not full, instead of buffering without limit. Woken by
 * `unblocked`, `drain`, the channel's close and the connection's loss (no polling); returns as soon as
 * `closed()` holds (the caller then fails with its own error), throws `notWritable(blocked)` at `deadline`.
 */
export async function waitWritable(
  link: Link,
  buffer: WriteBuffer,
  deadline: number,
  closed: () => boolean,
  notWritable: (blocked: boolean) => Error,
): Promise<void> {
  while ((link.blocked || buffer.full) && !closed()) {
    const remaining = deadline - Date.now();
    const blocked = link.blocked;
    if (remaining <= 0) throw notWritable(blocked);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, remaining);
      timer.unref();
      function done(): void {
        clearTimeout(timer);
        link.unblockWaiters.delete(done);
        buffer.waiters.delete(done);
        resolve();
      }
      if (blocked) link.unblockWaiters.add(done);
      buffer.waiters.add(done);
    });
  }
}
