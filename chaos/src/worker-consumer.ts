/**
 * A chaos consumer process: a Beetle subscriber with a Redis dedup store (master file) whose handler records
 * its completion (`D`) with a synchronous write before it returns. When armed by the harness, the next handler
 * run is held before completing (`H`, reported over IPC) so the harness can SIGKILL the process inside it.
 */
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type HandlerContext, type HandlerMessage } from '@beetle/subscriber';
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

const settings = readSettings('consumer');
const logger = stderrLogger(`consumer#${settings.index}[${process.pid}]`);
const records = new RecordFile(settings.recordFile);
exitWithParent();

const config = workerConfig(settings);
const store = RedisDedupStore.fromConfig(config, { logger });
const subscriber = new Subscriber({ config, topology: workerTopology(settings), store, logger });
let armed = false;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function handler(message: HandlerMessage, context: HandlerContext): Promise<void> {
  if (armed) {
    armed = false;
    records.write('H', message.uuid, Date.now(), process.pid);
    tell({ type: 'holding', id: message.uuid, pid: process.pid });
    // Until the harness kills us (never completes on its own).
    await new Promise(() => undefined);
  }
  const span = settings.workMaxMs - settings.workMinMs;
  await sleep(settings.workMinMs + Math.random() * span);
  if (context.signal.aborted) throw new Error('handler aborted');
  records.write('D', message.uuid, Date.now(), process.pid, context.attempt, context.server);
}

subscriber.on('processed', (event) => {
  if (event.message === undefined) return;
  records.write(
    'P',
    event.message.uuid,
    Date.now(),
    process.pid,
    event.outcome,
    event.server,
    event.settled,
    event.message.redelivered ? 1 : 0,
  );
});

subscriber.register(settings.queue, handler, {
  attempts: settings.attempts,
  timeout: settings.handlerTimeout,
  delay: settings.handlerDelay,
});

async function start(): Promise<void> {
  await subscriber.listen();
  // Ready once consuming from every broker (the queue is then declared and bound everywhere).
  const deadline = Date.now() + 60_000;
  while (subscriber.status().some((broker) => broker.state !== 'consuming')) {
    if (Date.now() > deadline) {
      const states = subscriber.status().map((b) => `${b.server}=${b.state}`);
      throw new Error(`not consuming from every broker after 60 s: ${states.join(', ')}`);
    }
    await sleep(100);
  }
  tell({ type: 'ready', pid: process.pid });
}

async function stop(): Promise<void> {
  await subscriber.stop({ timeout: 3 });
  await store.close();
  records.close();
}

process.on('message', (message: ToWorker) => {
  if (message.type === 'arm-kill') armed = true;
  else if (message.type === 'stop') {
    stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'stop failed');
        process.exit(1);
      },
    );
  }
});

start().catch((error: unknown) => {
  tell({ type: 'fatal', pid: process.pid, error: String(error) });
  process.exit(1);
});
