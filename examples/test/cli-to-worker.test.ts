import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { main as beetle } from '@beetle/cli';
import { main as worker } from '../src/worker.js';
import { deleteTopology, exampleConfig } from '../src/support.js';
import { exampleEnv, testOptions } from './env.js';

describe('a message published with `beetle publish` is handled by the example worker', () => {
  it('handles a redundant message once', async () => {
    const queue = `beetle-demo-${randomBytes(4).toString('hex')}`;
    const env = exampleEnv();
    const out: string[] = [];
    const err: string[] = [];
    let ready!: () => void;
    const readyPromise = new Promise<void>((resolve) => (ready = resolve));
    const running = worker({ ...testOptions(), queue, count: 1, onReady: ready });
    try {
      await readyPromise;
      const code = await beetle(['publish', queue, 'hello from the CLI', '--redundant'], {
        env,
        stdout: { write: (s: string) => out.push(s) },
        stderr: { write: (s: string) => err.push(s) },
        stdin: (async function* () {})(),
        isTTY: false,
      });
      expect(err.join('')).toBe('');
      expect(code).toBe(0);
      expect(out.join('').trim()).toBe('2');
      const summary = await running;
      expect(summary.handled).toHaveLength(1);
      expect(summary.handled[0]).toMatchObject({ body: 'hello from the CLI', redundant: true });
    } finally {
      await running.catch(() => undefined);
      await deleteTopology(exampleConfig({ env }), { queues: [queue], exchanges: [queue] });
    }
  });
});
