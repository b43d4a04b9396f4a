import { describe, expect, it } from 'vitest';
import { withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** The health check (`ping`, optional). */
export function pingContract(factory: DedupStoreFactory): void {
  describe('ping() (optional: the health check)', () => {
    const fixture = withStore(factory, 0);

    it('resolves while the store can serve calls', async () => {
      const { store } = fixture.current();
      if (!store.ping) return; // optional
      await expect(store.ping()).resolves.toBeUndefined();
    });
  });
}
