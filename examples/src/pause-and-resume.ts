/**
 * Pausing and resuming a queue (Ruby `examples/pause_and_resume.rb`): the handler finds that a downstream
 * system is "offline" and pauses its own queue (basic.cancel on every broker); a timer resumes it later.
 * Messages published meanwhile wait in the broker and are handled after the resume.
 *
 *   npx tsx examples/src/pause-and-resume.ts
 */
import { Client } from '@beetle/client';
import {
  deleteTopology,
  exampleConfig,
  output,
  runId,
  runIfScript,
  waitFor,
  type ExampleOptions,
  type ExampleSummary,
} from './support.js';

export interface PauseAndResumeOptions extends ExampleOptions {
  /** Messages to publish (default 10). */
  readonly count?: number;
  /** The message number at which the downstream system goes offline (default 3). */
  readonly offlineAt?: number;
  /** Milliseconds the queue stays paused (default 2000). */
  readonly pauseMs?: number;
}

export interface PauseAndResumeSummary extends ExampleSummary {
  readonly published: number;
  readonly handled: number;
  readonly paused: boolean;
  readonly resumed: boolean;
  /** Milliseconds between pause and resume. */
  readonly pausedForMs: number;
  /**
   * Handler runs that started after the pause took effect: deliveries already received before (at most the
   * prefetch count per broker).
   */
  readonly handledWhilePaused: number;
  readonly handledAfterResume: number;
}

export async function main(options: PauseAndResumeOptions = {}): Promise<PauseAndResumeSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const count = options.count ?? 10;
  const offlineAt = options.offlineAt ?? 3;
  const pauseMs = options.pauseMs ?? 2000;
  const queue = `beetle-example-pause-resume-${runId()}`;
  const config = exampleConfig(options, { prefetchCount: 1 }, logger);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, number>(queue);
  let handled = 0;
  let handledWhilePaused = 0;
  let handledAfterResume = 0;
  let pausedAt: number | undefined;
  let pauseDone = false;
  let resumeStartedAt: number | undefined;
  let resumedAt: number | undefined;
  let resumeTimer: NodeJS.Timeout | undefined;
  const resume = async (): Promise<void> => {
    // Deliveries can start before resumeListening resolves: basic.consume is answered per broker.
    resumeStartedAt = Date.now();
    await client.resumeListening([queue]);
    resumedAt = Date.now();
    print(`downstream back online: resumed ${queue}`);
  };
  client.handler(queue, (message) => {
    handled++;
    const state =
      pausedAt === undefined
        ? 'listening'
        : !pauseDone
          ? 'pausing'
          : resumeStartedAt === undefined
            ? 'paused'
            : 'resumed';
    if (state === 'paused') handledWhilePaused++;
    if (state === 'resumed') handledAfterResume++;
    print(`handled message ${message.text()} (${state})`);
    if (handled === offlineAt) {
      pausedAt = Date.now();
      print(`downstream offline: pausing ${queue} for ${pauseMs} ms`);
      // Not awaited inside the handler: the pause cancels the consumers while this delivery finishes.
      client.pauseListening([queue]).then(
        () => {
          pauseDone = true;
          print(`paused: no consumers on ${queue} any more`);
        },
        (error: unknown) => print(`pause failed: ${String(error)}`),
      );
      resumeTimer = setTimeout(() => {
        resume().catch((error: unknown) => print(`resume failed: ${String(error)}`));
      }, pauseMs);
    }
  });
  try {
    await client.listen();
    for (let n = 1; n <= count; n++) await client.publish(queue, n);
    print(`published ${count} messages`);
    await waitFor(() => handled >= count, pauseMs + 15_000);
  } finally {
    clearTimeout(resumeTimer);
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const paused = pausedAt !== undefined;
  const resumed = resumedAt !== undefined;
  return {
    example: 'pause-and-resume',
    ok:
      handled === count &&
      paused &&
      resumed &&
      handledWhilePaused <= config.servers.length * config.prefetchCount &&
      (count <= offlineAt + config.servers.length || handledAfterResume > 0),
    elapsedMs: Date.now() - started,
    published: count,
    handled,
    paused,
    resumed,
    pausedForMs: pausedAt !== undefined && resumeStartedAt !== undefined ? resumeStartedAt - pausedAt : 0,
    handledWhilePaused,
    handledAfterResume,
  };
}

runIfScript(import.meta.url, () => main());
