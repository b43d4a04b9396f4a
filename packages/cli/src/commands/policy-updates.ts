import { checkPolicyUpdate, PolicyClient, policyUpdateAllowance } from '@beetle/broker-amqp';
import { BeetleError, isBeetleError, PolicyRefusedError } from '@beetle/core';
import type { CommandSpec } from '../command.js';
import { numberFlag } from '../options.js';
import { errorMessage, oneLine } from '../output.js';
import { aborted, countFlag, createClient, jsonFlag, topologyFlag } from './shared.js';

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
removed. Only messages naming one of the configured brokers (servers, additional_subscription_servers) and a
queue of --topology or of policy_updates_allowed_queues (names, prefix*, or * for all) are applied; others
are refused (error policy-refused) and dropped. A message that cannot be applied is reported on stderr and
acknowledged (it is not retried). Runs until SIGINT or SIGTERM, or until --count messages were handled.`,
  flags: { ...topologyFlag, ...countFlag, ...jsonFlag },
  examples: [
    'beetle policy-updates --config-file beetle.yml --topology topology.yml',
    "beetle policy-updates --config-file beetle.yml --set 'policy_updates_allowed_queues=orders,billing.*'",
  ],
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
    const allowance = policyUpdateAllowance(ctx.config, client.topology);
    try {
      client.handler(queue, async (message) => {
        let payload: Record<string, unknown> = {};
        try {
          const parsed = message.json<unknown>();
          if (typeof parsed === 'object' && parsed !== null) payload = parsed as Record<string, unknown>;
          await policies.updateQueueProperties(checkPolicyUpdate(ctx.config, allowance, parsed));
          if (json) ctx.print.json({ ok: true, queue: payload['queue_name'], server: payload['server'] });
          else
            ctx.print.out(
              `applied policy update for ${String(payload['queue_name'])} on ${String(payload['server'])}`,
            );
        } catch (error) {
          const text = oneLine(errorMessage(error));
          const reason = isBeetleError(error) ? error.reason : undefined;
          const refused = error instanceof PolicyRefusedError;
          if (refused) {
            // Dropped (acked): it would be refused again on every redelivery. Always on stderr (also with
            // --json, and before the command's logging starts): this line is its record.
            ctx.logger.error(
              { err: error, reason, field: error.field, uuid: message.uuid, server: message.server },
              'refused a policy update message; dropped',
            );
            ctx.print.err(
              `beetle: refused policy update message ${message.uuid} from ${message.server} (${error.field}); dropped: ${text}`,
            );
          }
          if (json)
            ctx.print.json({
              ok: false,
              queue: payload['queue_name'],
              server: payload['server'],
              ...(reason === undefined ? {} : { reason }),
              error: text,
            });
          else if (!refused)
            ctx.print.err(`beetle: policy update for ${String(payload['queue_name'])} failed: ${text}`);
        }
        handled++;
        if (limit !== undefined && handled >= limit) finish();
      });
      const status = await client.listen([queue]);
      if (!status.some((s) => s.state === 'consuming')) {
        throw new BeetleError('broker-connect', `no broker reachable: ${errorMessage(status[0]?.lastError)}`);
      }
      ctx.startLogging();
      ctx.print.err(`applying policy updates from ${queue} for ${allowance.description}`);
      if (allowance.empty) {
        ctx.print.err(
          'beetle: no queue is allowed, every policy update will be refused: pass --topology or set policy_updates_allowed_queues',
        );
      }
      await Promise.race([done, aborted(ctx.signal)]);
      return 0;
    } finally {
      await client.stop();
    }
  },
};
