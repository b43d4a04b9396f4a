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
 * When acks sent through amqplib (what `@beetle/broker-amqp` uses) have reached the socket: amqplib hands a
 * tick's frames to the socket in the check phase, from an immediate its muxer schedules in a later tick of
 * the ack (the stream's 'readable'); an immediate scheduled from a later tick still runs after it.
 */
export const amqplibAckFlush: AckFlush = (flush) => process.nextTick(() => setImmediate(flush));
