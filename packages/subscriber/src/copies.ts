/**
 * What this process knows about the copies of a message (the two copies of a redundant message, or a
 * redelivery) that reach it, so that a copy need not ask the store what an earlier copy here already learnt.
 *
 * - Copies of one message line up: a copy arriving while another is in flight waits for it instead of being
 *   rejected with `HandlerNotYetTimedOut` and requeued after `rejectRequeueDelay`.
 * - When a copy ends with the message completed in the store and its delivery acked, the next copy knows the
 *   store says `completed`: it skips the claim (what the claim would answer is known) and is acked. If that
 *   copy is already waiting, the first copy also hands it its ack count, and both acks are recorded in one
 *   store call after both deliveries were acked. A redundant message whose copies meet in one process thus
 *   costs 3 store calls (claim, complete, acknowledged) instead of 5.
 * - A copy arriving shortly after an earlier copy has left finds the message in a small bounded memory of
 *   recent completions and also skips the claim (4 calls instead of 5).
 *
 * Knowing "completed" is safe: a completed status only disappears when the keys are deleted (both acks
 * counted, or garbage collection after `expires_at`), and in both cases asking the store would be worse: it
 * would report a first sighting and run the handler again. Deferring an ack count to a later copy keeps
 * Ruby's order (the count is recorded after the ack); if this process dies first the keys stay until the
 * garbage collector removes them, which is also what Ruby leaves when it dies between ack and count.
 */

/** Recent completions are remembered in two generations of at most this many each (oldest dropped whole). */
const GENERATION_SIZE = 5_000;
/** How long a recent completion is remembered (ms). */
const RECENT_TTL_MS = 60_000;

export class LocalCopies {
  private readonly tails = new Map<string, CopyLine>();
  /**
   * Messages completed and acked here recently (key → time in ms), in two generations: when the current
   * one is full it becomes the previous one and the previous is dropped, so remembering costs O(1) and at
   * most 2 × GENERATION_SIZE keys are kept.
   */
  private current = new Map<string, number>();
  private previous = new Map<string, number>();

  constructor(private readonly nowMs: () => number) {}

  /** Deliveries in flight, by message (for tests and metrics). */
  get size(): number {
    return this.tails.size;
  }

  /**
   * Joins the line of `key`. The returned line's `previous` settles once the copy before it is done
   * (undefined when there is none); `leave()` must be called when this delivery is done (idempotent).
   */
  enter(key: string): CopyLine {
    const before = this.tails.get(key);
    const line = new CopyLine(this, key, before?.done());
    if (before !== undefined) {
      before.next = line;
      // The copy before has completed the message already and is recording its own ack.
      if (before.completedHere) line.knownCompleted = true;
    } else if (this.takeRecent(key)) {
      line.knownCompleted = true;
    }
    this.tails.set(key, line);
    return line;
  }

  /** @internal */
  left(line: CopyLine): void {
    if (this.tails.get(line.key) === line) this.tails.delete(line.key);
    // Remembered only for the first copy seen here: after a second one, both copies are accounted for.
    if (
      line.completedHere &&
      line.next === undefined &&
      line.previous === undefined &&
      !line.knownCompleted
    ) {
      this.remember(line.key);
    }
  }

  private remember(key: string): void {
    if (this.current.size >= GENERATION_SIZE) {
      this.previous = this.current;
      this.current = new Map();
    }
    this.current.set(key, this.nowMs());
  }

  private takeRecent(key: string): boolean {
    const at = this.current.get(key) ?? this.previous.get(key);
    if (at === undefined) return false;
    // Two copies per message: the other one has come.
    this.current.delete(key);
    this.previous.delete(key);
    return this.nowMs() - at <= RECENT_TTL_MS;
  }
}

/** A delivery's place in the line of its message; the promise the next copy waits on is made only when needed. */
export class CopyLine {
  /** The store is known to have this message completed (an earlier copy here saw or made it so). */
  knownCompleted = false;
  /** Acks of earlier copies here that are not recorded in the store yet; recorded with this copy's. */
  inheritedAcks = 0;
  /** This copy ended with the message completed and its delivery acked. */
  completedHere = false;
  /** @internal The copy that arrived after this one. */
  next: CopyLine | undefined;
  /** Still waiting for the copy before it (has not looked at the store yet). */
  waiting = true;
  private left = false;
  private donePromise: Promise<void> | undefined;
  private resolveDone: (() => void) | undefined;

  constructor(
    private readonly copies: LocalCopies,
    readonly key: string,
    readonly previous: Promise<void> | undefined,
  ) {
    if (previous === undefined) this.waiting = false;
  }

  /** Settles once this delivery has left the line. */
  done(): Promise<void> {
    if (this.donePromise === undefined) {
      this.donePromise = this.left
        ? Promise.resolve()
        : new Promise<void>((resolve) => (this.resolveDone = resolve));
    }
    return this.donePromise;
  }

  /**
   * This copy was acked and the message is completed in the store: tells the next copy, and hands it
   * `acks` acks to record with its own if it is still waiting. Returns whether it took the acks (the caller
   * then records nothing).
   */
  completed(acks: number): boolean {
    this.completedHere = true;
    const next = this.next;
    if (next === undefined || !next.waiting) return false;
    next.knownCompleted = true;
    next.inheritedAcks += acks;
    return true;
  }

  /** Acks handed to this copy and not recorded yet; the caller records them now (resets the count). */
  takeInheritedAcks(): number {
    const acks = this.inheritedAcks;
    this.inheritedAcks = 0;
    return acks;
  }

  leave(): void {
    if (this.left) return;
    this.left = true;
    this.waiting = false;
    this.resolveDone?.();
    this.copies.left(this);
  }
}
