/**
 * What this process knows about the copies of a message that reach it (the two copies of a redundant
 * message, or a redelivery): their line, recent completions and held ack counts. Why and how: the README,
 * "Copies of a message in this process".
 */
import type { MessageRef } from '@beetle/core';

/** Recent completions are remembered in two generations of at most this many each (oldest dropped whole). */
const GENERATION_SIZE = 5_000;
/** How long a recent completion is remembered (ms). */
const RECENT_TTL_MS = 60_000;
/** How long the ack count of a first copy is held for the other copy (ms). */
export const HOLD_MS = 5_000;
/** At most this many messages have their ack count held; beyond, acks are recorded at once. */
const MAX_HELD = 10_000;

/** A message completed here recently; `acks` > 0 while its ack count is held (not recorded in the store). */
interface Recent {
  readonly at: number;
  acks: number;
  readonly ref: MessageRef | undefined;
}

/** Acks whose hold ended: the caller records them in the store. */
export interface DueAcks {
  readonly ref: MessageRef;
  readonly acks: number;
}

export class LocalCopies {
  private readonly tails = new Map<string, CopyLine>();
  /**
   * Messages completed and acked here recently (key → time in ms), in two generations: when the current
   * one is full it becomes the previous one and the previous is dropped, so remembering costs O(1) and at
   * most 2 × GENERATION_SIZE keys are kept.
   */
  private current = new Map<string, Recent>();
  private previous = new Map<string, Recent>();
  /** Completions with held acks, oldest first (entries whose acks were taken stay until swept). */
  private held: Recent[] = [];
  private heldHead = 0;
  /** Messages whose ack count is held (by a line about to leave, or in `held`). */
  private heldCount = 0;

  constructor(private readonly nowMs: () => number) {}

  /** Deliveries in flight, by message (for tests and metrics). */
  get size(): number {
    return this.tails.size;
  }

  /** Messages whose ack count is held here, not yet recorded in the store. */
  get heldMessages(): number {
    return this.heldCount;
  }

  /**
   * Held acks to record now: those held for `HOLD_MS` or longer (the other copy did not come), or all of them
   * (`all`, on stop).
   */
  takeDueHeld(all = false): DueAcks[] {
    const now = this.nowMs();
    const due: DueAcks[] = [];
    while (this.heldHead < this.held.length) {
      const entry = this.held[this.heldHead]!;
      if (!all && now - entry.at < HOLD_MS) break;
      this.heldHead++;
      if (entry.acks > 0 && entry.ref !== undefined) {
        due.push({ ref: entry.ref, acks: entry.acks });
        entry.acks = 0;
        this.heldCount--;
      }
    }
    if (this.heldHead * 2 >= this.held.length) this.compactHeld();
    return due;
  }

  /** Drops the swept head of `held` and the entries whose acks a twin took (amortised: called when most are). */
  private compactHeld(): void {
    this.held = this.held.slice(this.heldHead).filter((entry) => entry.acks > 0);
    this.heldHead = 0;
  }

  /** `line` is the other copy: it records the held `acks` with its own. */
  private inherit(line: CopyLine, acks: number): void {
    line.knownCompleted = true;
    line.inheritedAcks += acks;
    this.heldCount--;
  }

  /** @internal A line may hold an ack count (false: too many held, the caller records it now). */
  reserveHold(): boolean {
    if (this.heldCount >= MAX_HELD) return false;
    this.heldCount++;
    return true;
  }

  /**
   * Joins the line of `key`. The returned line's `previous` settles once the copy before it is done
   * (undefined when there is none); `leave()` must be called when this delivery is done (idempotent).
   */
  enter(key: string, ref?: MessageRef): CopyLine {
    const before = this.tails.get(key);
    const line = new CopyLine(this, key, before?.done(), ref);
    if (before !== undefined) {
      before.next = line;
      // The copy before has completed the message already: recording its own ack, or holding it for this one.
      if (before.completedHere) line.knownCompleted = true;
      if (before.heldAcks > 0) {
        this.inherit(line, before.heldAcks);
        before.heldAcks = 0;
      }
    } else {
      const recent = this.takeRecent(key);
      if (recent !== undefined) {
        line.knownCompleted = true;
        if (recent.acks > 0) {
          this.inherit(line, recent.acks);
          recent.acks = 0;
        }
      }
    }
    this.tails.set(key, line);
    return line;
  }

  /** @internal */
  left(line: CopyLine): void {
    if (this.tails.get(line.key) === line) this.tails.delete(line.key);
    const held = line.heldAcks;
    if (held > 0) {
      line.heldAcks = 0;
      const next = line.next;
      if (next?.waiting === true) {
        // The other copy came meanwhile and waits for this one: it records both acks.
        this.inherit(next, held);
      } else {
        const entry: Recent = { at: this.nowMs(), acks: held, ref: line.ref };
        this.remember(line.key, entry);
        // Mostly entries whose acks a twin took (at most MAX_HELD still hold acks): drop those.
        if (this.held.length - this.heldHead >= 2 * MAX_HELD) this.compactHeld();
        this.held.push(entry);
      }
      return;
    }
    // Remembered only for the first copy seen here: after a second one, both copies are accounted for.
    if (
      line.completedHere &&
      line.next === undefined &&
      line.previous === undefined &&
      !line.knownCompleted
    ) {
      this.remember(line.key, { at: this.nowMs(), acks: 0, ref: undefined });
    }
  }

  private remember(key: string, entry: Recent): void {
    if (this.current.size >= GENERATION_SIZE) {
      // Held acks of dropped entries stay in `held` and are recorded when due.
      this.previous = this.current;
      this.current = new Map();
    }
    this.current.set(key, entry);
  }

  private takeRecent(key: string): Recent | undefined {
    const entry = this.current.get(key) ?? this.previous.get(key);
    if (entry === undefined) return undefined;
    // Two copies per message: the other one has come.
    this.current.delete(key);
    this.previous.delete(key);
    // Past the TTL the memory is not trusted; any held acks (not possible: HOLD_MS < TTL) stay in `held`.
    return this.nowMs() - entry.at <= RECENT_TTL_MS ? entry : undefined;
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
  /** @internal Acks of this copy held for the other copy (see `completed`), handed on when it leaves. */
  heldAcks = 0;
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
    /** The message in the store; without it acks are never held. */
    readonly ref?: MessageRef,
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
   * This copy (of a redundant message) was acked and the message is completed in the store: tells the next
   * copy, and hands it `acks` acks to record with its own if it is still waiting. A first copy seen here
   * whose handler ran here otherwise holds its acks for the other copy (see `LocalCopies`); a copy that found
   * the message completed by another process records at once. Returns whether the acks were taken over (the
   * caller then records nothing).
   */
  completed(acks: number, handlerRan = false): boolean {
    this.completedHere = true;
    const next = this.next;
    if (next !== undefined) {
      if (!next.waiting) return false;
      next.knownCompleted = true;
      next.inheritedAcks += acks;
      return true;
    }
    if (
      !handlerRan ||
      this.ref === undefined ||
      this.previous !== undefined ||
      this.knownCompleted ||
      !this.copies.reserveHold()
    ) {
      return false;
    }
    this.heldAcks += acks;
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
