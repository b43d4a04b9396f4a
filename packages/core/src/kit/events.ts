import type { Logger } from '../logger.js';

type Listener<T> = (payload: T) => void;

/**
 * A minimal typed event emitter shared by the publisher and the subscriber. Listener exceptions are logged
 * and never reach the code that emitted the event.
 */
export class TypedEmitter<E extends object> {
  private readonly listeners = new Map<keyof E, Set<Listener<never>>>();

  constructor(private readonly listenerLogger: Logger) {}

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof E>(event: K, listener: Listener<E[K]>): void {
    this.listeners.get(event)?.delete(listener);
  }

  /** Whether anyone listens (lets hot paths skip building a payload). */
  has(event: keyof E): boolean {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  emit<K extends keyof E>(event: K, payload: E[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<E[K]>)(payload);
      } catch (error) {
        this.listenerLogger.error(
          { err: error, event: String(event) },
          `listener for ${String(event)} threw`,
        );
      }
    }
  }
}
