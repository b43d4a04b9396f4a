/**
 * The short chaos profile of the default suite: 3 brokers, Redis master + replica, 1 publisher and 2 consumer
 * processes, 300 redundant messages; a consumer SIGKILLed inside a handler (attempts 3, handler timeout 3 s: the
 * message is processed again after timeout + 10 s grace) and a broker killed with kill -9 and restarted.
 * Budget: ~120 s on 2 cores (broker starts dominate; the three start in parallel).
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runChaos } from '../src/harness.js';

function missingTools(): string[] {
  return ['rabbitmq-server', 'redis-server', 'redis-cli', 'curl'].filter((tool) => {
    try {
      execFileSync('bash', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
}

const missing = missingTools();

// Like every test needing services: a missing tool fails the run, it never skips.
describe('chaos (short profile)', () => {
  it('loses, duplicates and invents nothing across a consumer kill mid-handler and a broker kill -9', async () => {
    expect(missing, 'tools needed by the chaos harness').toEqual([]);
    const lines: string[] = [];
    const result = await runChaos({
      messages: 300,
      duration: 25,
      seed: 20261128,
      publishers: 1,
      consumers: 2,
      faults: ['consumer-kill', 'kill-broker'],
      maxFaults: 2,
      drainTimeout: 45,
      ports: { brokers: [5685, 5686, 5687], redis: [6385, 6386] },
      // With Ruby's default (0) a kill -9 can lose the broker's record of an ack sent just before: the copy
      // comes back after the restart, finds no dedup keys (deleted after the second ack) and runs again
      // (see chaos/README.md, "Findings"). Keeping the status key avoids that; the fault is still exercised.
      statusKeyExpiry: 120,
      killServicesAtEnd: true,
      log: (line) => lines.push(line),
    });
    const summary = JSON.stringify({ ...result, log: lines.slice(-40) }, null, 2);
    expect(
      result.faultsInjected.map((f) => f.kind),
      summary,
    ).toEqual(['consumer-kill', 'kill-broker']);
    expect(result.faultsInjected[0]?.description, summary).toMatch(/inside the handler of /);
    expect(result.confirmed, summary).toBeGreaterThan(250);
    expect(result.lost, summary).toBe(0);
    expect(result.duplicated, summary).toBe(0);
    expect(result.unexpected, summary).toBe(0);
    expect(result.crashes, summary).toEqual([]);
    expect(result.drained, summary).toBe(true);
  }, 170_000);
});
