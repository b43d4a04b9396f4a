import { PolicyClient } from '@beetle/broker-amqp';
import type { CommandSpec } from '../command.js';
import { numberFlag } from '../options.js';
import { errorMessage, oneLine } from '../output.js';
import { aborted, countFlag, createClient, jsonFlag } from './shared.js';

export const policyUpdatesCommand: CommandSpec = {
  name: 'policy-updates',
  logLevel: 'warn',
  summary: 'apply the queue policies that publishers and subscribers send as messages',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `The worker Ruby's asynchronous policy path needs: consumes beetle-policy-updates (option
beetle_policy_updates_queue_name) on every broker and applies each policy update message (JSON: queue_name,
bindings, dead_letter_queue_name, message_ttl, dead_lettering, lazy, server) through the RabbitMQ management
API of the broker named in it: the dead letter queue's policy, the queue's policy, then obsolete bindings are
removed. A message that cannot be applied is reported on stderr and acknowledged (it is not retried). Runs
until SIGINT or SIGTERM, or until --count messages were handled.`,
  flags: { ...countFlag, ...jsonFlag },
  examples: ['beetle policy-updates --config-file beetle.yml'],
  async run(ctx) {
    const limit = numberFlag(ctx.flags, 'count', { integer: true, min: 1 });
    const json = ctx.flags['json'] === true;
    const policies = new PolicyClient(ctx.config, ctx.logger);
    const queue = ctx.config.beetlePolicyUpdatesQueueName;
    let handled = 0;
    let finish: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const client = await createClient(ctx);
    try {
      client.handler(queue, async (message) => {
        let payload: Record<string, unknown> = {};
        try {
          payload = message.json<Record<string, unknown>>();
          await policies.updateQueueProperties(payload);
          if (json) ctx.print.json({ ok: true, queue: payload['queue_name'], server: payload['server'] });
          else
            ctx.print.out(
              `applied policy update for ${String(payload['queue_name'])} on ${String(payload['server'])}`,
            );
        } catch (error) {
          const text = oneLine(errorMessage(error));
          if (json)
            ctx.print.json({
              ok: false,
              queue: payload['queue_name'],
              server: payload['server'],
              error: text,
            });
          else ctx.print.err(`beetle: policy update for ${String(payload['queue_name'])} failed: ${text}`);
        }
        handled++;
        if (limit !== undefined && handled >= limit) finish();
      });
      const status = await client.listen([queue]);
      if (!status.some((s) => s.state === 'consuming')) {
        throw Object.assign(new Error(`no broker reachable: ${errorMessage(status[0]?.lastError)}`), {
          reason: 'broker-connect',
        });
      }
      ctx.startLogging();
      ctx.print.err(`applying policy updates from ${queue}`);
      await Promise.race([done, aborted(ctx.signal)]);
      return 0;
    } finally {
      await client.stop();
    }
  },
};
