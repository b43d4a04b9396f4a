/**
 * The acks of one consumer channel, sent once per event-loop turn: the longest run of acked deliveries at the
 * front of the unsettled ones as one `basic.ack(multiple)`, the rest one by one. RabbitMQ spends less per
 * message on one ack frame for many deliveries, and a busy subscriber settles dozens per turn.
 *
 * `multiple` acknowledges every unsettled delivery up to its tag, so it is only used for a run in which each
 * delivery was acked here: a delivery still being handled, or left for redelivery, is never covered.
 */
export class AckBatch {
  /** Delivery tags not settled yet, in arrival order (tags grow on a channel). */
  private readonly unsettled = new Set<number>();
  /** Tags acked since the last flush. */
  private readonly acked = new Set<number>();
  private scheduled = false;

  /**
   * @param send writes one ack frame (`multiple`: every unsettled tag up to `tag`).
   * @param schedule runs the flush later (the check phase of this loop turn).
   */
  constructor(
    private readonly send: (tag: number, multiple: boolean) => void,
    private readonly schedule: (flush: () => void) => void = setImmediate,
  ) {}

  get pending(): number {
    return this.acked.size;
  }

  /** A delivery arrived on the channel. */
  received(tag: number): void {
    this.unsettled.add(tag);
  }

  /** Acks `tag` with the next flush. */
  ack(tag: number): void {
    this.acked.add(tag);
    if (this.scheduled) return;
    this.scheduled = true;
    this.schedule(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /**
   * Called before a nack or reject of `tag` is written: the acks waiting are written first (a later
   * `multiple` could otherwise cover a tag already nacked), and `tag` is settled.
   */
  settledOtherwise(tag: number): void {
    this.flush();
    this.unsettled.delete(tag);
  }

  /** Writes the acks waiting (also before the channel closes). */
  flush(): void {
    if (this.acked.size === 0) return;
    let runEnd: number | undefined;
    let runLength = 0;
    for (const tag of this.unsettled) {
      if (!this.acked.has(tag)) break;
      runEnd = tag;
      runLength++;
    }
    if (runEnd !== undefined) {
      for (const tag of this.unsettled) {
        this.unsettled.delete(tag);
        this.acked.delete(tag);
        if (tag === runEnd) break;
      }
      this.send(runEnd, runLength > 1);
    }
    for (const tag of this.acked) {
      this.unsettled.delete(tag);
      this.send(tag, false);
    }
    this.acked.clear();
  }

  /** The channel is gone: nothing of it can be settled any more. */
  clear(): void {
    this.unsettled.clear();
    this.acked.clear();
  }
}
