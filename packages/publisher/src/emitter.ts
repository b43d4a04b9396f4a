import type { Logger } from '@beetle/core';

type Listener<T> = (payload: T) => void;

/** A minimal typed event emitter: listener errors are logged, never thrown into the publisher. */
export class TypedEmitter<E extends object> {
  private readonly listeners = new Map<keyof E, Set<Listener<never>>>();

  constructor(private readonly logger: Logger) {}

  /** Adds a listener; returns a function removing it. */
  on<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  off<K extends keyof E>(event: K, listener: Listener<E[K]>): void {
    this.listeners.get(event)?.delete(listener);
  }

  has(event: keyof E): boolean {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  emit<K extends keyof E>(event: K, payload: E[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of set) {
      try {
        (listener as Listener<E[K]>)(payload);
      } catch (error) {
        this.logger.error({ err: error, event: String(event) }, `listener for ${String(event)} threw`);
      }
    }
  }
}
