/**
 * A chaos publisher process: publishes its share of the run's messages redundantly at a fixed rate, recording
 * each attempt (`A`), confirm (`C`, with the number of brokers) and failure (`F`) before going on.
 */
import { randomUUID } from 'node:crypto';
import { Publisher } from '@beetle/publisher';
import {
  RecordFile,
  exitWithParent,
  readSettings,
  stderrLogger,
  tell,
  workerConfig,
  workerTopology,
  type ToWorker,
} from './protocol.js';

const settings = readSettings('publisher');
const logger = stderrLogger(`publisher#${settings.index}[${process.pid}]`);
const records = new RecordFile(settings.recordFile);
exitWithParent();

const publisher = new Publisher({
  config: workerConfig(settings),
  topology: workerTopology(settings),
  logger,
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function run(): Promise<void> {
  const start = Date.now();
  const inFlight = new Set<Promise<void>>();
  for (let seq = 0; seq < settings.count; seq++) {
    const due = start + (seq * 1000) / settings.rate;
    if (due > Date.now()) await sleep(due - Date.now());
    while (inFlight.size >= settings.window) await Promise.race(inFlight);
    const id = randomUUID();
    records.write('A', id, Date.now());
    const pending = publisher
      .publish(settings.queue, { publisher: settings.index, seq }, { redundant: true, messageId: id })
      .then(
        (copies) => records.write('C', id, Date.now(), copies),
        (error: unknown) => records.write('F', id, Date.now(), error instanceof Error ? error.name : 'Error'),
      )
      .finally(() => inFlight.delete(pending));
    inFlight.add(pending);
  }
  await Promise.all(inFlight);
}

process.on('message', (message: ToWorker) => {
  if (message.type === 'go') {
    run().then(
      async () => {
        await publisher.close({ timeout: 2 });
        records.close();
        // The harness takes exit code 0 as "all publishes settled and recorded".
        process.exit(0);
      },
      (error: unknown) => {
        tell({ type: 'fatal', pid: process.pid, error: String(error) });
        process.exit(1);
      },
    );
  } else if (message.type === 'stop') {
    process.exit(0);
  }
});

tell({ type: 'ready', pid: process.pid });
