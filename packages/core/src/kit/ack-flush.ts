/**
 * The ack-ordering invariant: a dedup store call that may delete a message's keys (the cleanup after the
 * broker ack) must be written after that ack was written to the broker's socket. Were the keys deleted
 * first and the process killed before the ack left, the broker would redeliver a message the store no longer
 * knows, and its handler would run again.
 *
 * An `AckFlush` calls `flush` once the acks issued before it was called have been handed to the socket; a
 * store sends its deleting calls from there. Whoever writes the acks knows when that is (see
 * {@link amqplibAckFlush}); a store takes it as an option.
 */
export type AckFlush = (flush: () => void) => void;

/**
 * When acks sent through `@beetle/broker-amqp` (on amqplib) have reached the socket. The consumer channel
 * writes a loop turn's acks from an immediate (check phase); amqplib hands them to the socket from an
 * immediate its muxer schedules in a later tick of that write (the stream's 'readable'), so in the next
 * turn's check phase. An immediate scheduled from a later tick than an ack, and from there one more, runs
 * after both.
 */
export const amqplibAckFlush: AckFlush = (flush) =>
  process.nextTick(() => setImmediate(() => setImmediate(flush)));
