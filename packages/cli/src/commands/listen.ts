import type { Client } from '@beetle/client';
import { BeetleError, type BeetleMessage } from '@beetle/core';
import type { CommandContext, CommandSpec } from '../command.js';
import { numberFlag } from '../options.js';
import { errorMessage } from '../output.js';
import {
  aborted,
  countFlag,
  createClient,
  ensureQueue,
  jsonFlag,
  messageLines,
  messageRecord,
  probeBrokers,
  topologyFlag,
} from './shared.js';

/** Prints messages and resolves `done` after `--count` of them (or never). */
function messagePrinter(ctx: CommandContext): { print(message: BeetleMessage): void; done: Promise<void> } {
  const limit = numberFlag(ctx.flags, 'count', { integer: true, min: 1 });
  const json = ctx.flags['json'] === true;
  let seen = 0;
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });
  return {
    done,
    print(message) {
      seen++;
      if (json) ctx.print.json(messageRecord(message));
      else for (const line of messageLines(message)) ctx.print.out(line);
      if (limit !== undefined && seen >= limit) finish();
    },
  };
}

/** Stops the client gracefully (running handlers finish). */
async function stopClient(ctx: CommandContext, client: Client): Promise<void> {
  const result = await client.stop();
  if (result.abandoned > 0) ctx.print.err(`beetle: ${result.abandoned} message(s) left unacknowledged`);
}

const consumeFlags = { ...topologyFlag, ...countFlag, ...jsonFlag };

export const listenCommand: CommandSpec = {
  name: 'listen',
  logLevel: 'warn',
  summary: 'consume queues like a worker and print each message',
  args: '<queue...>',
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  description: `Consumes the queues on every broker with a handler that only prints the message (so each
message is acknowledged, and deduplicated through the Redis store like a real consumer would). Queues not
declared in --topology are registered with Ruby's defaults (exchange = key = <queue>). Runs until SIGINT or
SIGTERM (then stops gracefully) or until --count messages were printed. Messages still in flight when the
count is reached are printed too.`,
  flags: consumeFlags,
  examples: [
    'beetle listen orders --servers rabbit1:5672,rabbit2:5672',
    'beetle listen orders --count 1 --json',
  ],
  async run(ctx) {
    const printer = messagePrinter(ctx);
    const client = await createClient(ctx);
    try {
      for (const queue of ctx.positionals) ensureQueue(client, queue);
      client.handler(ctx.positionals, (message) => printer.print(message));
      const status = await client.listen(ctx.positionals);
      const up = status.filter((s) => s.state === 'consuming');
      if (up.length === 0) {
        const first = status[0];
        throw new BeetleError(
          'broker-connect',
          `no broker reachable${first === undefined ? '' : `: ${errorMessage(first.lastError)}`}`,
        );
      }
      for (const broker of status) {
        if (broker.state !== 'consuming') {
          ctx.print.err(
            `beetle: broker ${broker.server} not reachable yet (${errorMessage(broker.lastError)}); retrying`,
          );
        }
      }
      ctx.startLogging();
      ctx.print.err(`listening on ${ctx.positionals.join(', ')} (${up.map((s) => s.server).join(', ')})`);
      await Promise.race([printer.done, aborted(ctx.signal)]);
      return 0;
    } finally {
      await stopClient(ctx, client);
    }
  },
};

export const traceCommand: CommandSpec = {
  name: 'trace',
  logLevel: 'warn',
  summary: 'print copies of the traffic of queues, without consuming it',
  args: '<queue...>',
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  description: `Ruby's Client#trace: binds temporary auto-delete queues trace-<queue>-<host> with the same
bindings as each queue and prints what arrives there; the queues themselves and the dedup store are not
touched. Queues not declared in --topology are registered with Ruby's defaults (exchange = key = <queue>).
Runs until SIGINT or SIGTERM or until --count messages were printed.`,
  flags: consumeFlags,
  examples: ['beetle trace orders invoices --topology topology.yml', 'beetle trace orders --count 10 --json'],
  async run(ctx) {
    const printer = messagePrinter(ctx);
    const client = await createClient(ctx);
    try {
      for (const queue of ctx.positionals) ensureQueue(client, queue);
      // The trace handle has no broker status: check reachability first, so that no broker at all fails.
      const servers = [...ctx.config.servers, ...ctx.config.additionalSubscriptionServers];
      const probes = await probeBrokers(ctx.config, servers);
      if (probes.every((p) => p.error !== undefined)) {
        throw new BeetleError('broker-connect', `no broker reachable: ${probes[0]?.error ?? 'no servers'}`);
      }
      for (const probe of probes) {
        if (probe.error !== undefined) {
          ctx.print.err(`beetle: broker ${probe.server} not reachable yet (${probe.error}); retrying`);
        }
      }
      const handle = await client.trace(ctx.positionals, (message) => printer.print(message));
      ctx.startLogging();
      ctx.print.err(`tracing ${Object.values(handle.queues).join(', ')}`);
      await Promise.race([printer.done, aborted(ctx.signal)]);
      return 0;
    } finally {
      await stopClient(ctx, client);
    }
  },
};
