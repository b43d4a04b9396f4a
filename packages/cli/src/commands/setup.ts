import { QueueSetupError, type BrokerSetupReport } from '@beetle/publisher';
import type { CommandSpec } from '../command.js';
import { errorMessage, oneLine } from '../output.js';
import { createClient, jsonFlag, topologyFlag } from './shared.js';

interface SetupRecord {
  server: string;
  ok: boolean;
  error?: string;
  queues: { queue: string; policy: string; error?: string }[];
}

function reportRecord(report: BrokerSetupReport): SetupRecord {
  return {
    server: report.server,
    ok: report.error === undefined && report.queues.every((q) => q.policy !== 'failed'),
    ...(report.error === undefined ? {} : { error: oneLine(errorMessage(report.error)) }),
    queues: report.queues.map((q) => ({
      queue: q.queue,
      policy: q.policy,
      ...(q.policyError === undefined ? {} : { error: oneLine(errorMessage(q.policyError)) }),
    })),
  };
}

export const setupCommand: CommandSpec = {
  name: 'setup',
  summary: 'declare all queues, bindings and policies on every broker',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Runs setupQueuesAndPolicies (Ruby setup_queues_and_policies) for the declarations of --topology
(plus Beetle's policy queue) on every broker and prints what happened per broker: each queue with its
policy action (published: a policy update message was sent; applied: installed through the management API
because update_queue_properties_synchronously is set; skipped: no policy for this queue; failed). Exit
status 1 if a declaration or a policy failed on any broker.`,
  flags: { ...topologyFlag, ...jsonFlag },
  examples: ['beetle setup --topology topology.yml --config-file beetle.yml'],
  async run(ctx) {
    const client = await createClient(ctx);
    let reports: readonly BrokerSetupReport[];
    let failed = false;
    try {
      try {
        reports = await client.setupQueuesAndPolicies();
      } catch (error) {
        if (!(error instanceof QueueSetupError)) throw error;
        reports = error.report;
        failed = true;
      }
    } finally {
      await client.stop();
    }
    const records = reports.map(reportRecord);
    if (ctx.flags['json'] === true) {
      for (const record of records) ctx.print.json(record);
    } else {
      for (const record of records) {
        const status = record.ok ? 'ok' : `FAILED${record.error === undefined ? '' : `: ${record.error}`}`;
        ctx.print.out(`${record.server}: ${status}`);
        for (const q of record.queues) {
          ctx.print.out(`  ${q.queue}: policy ${q.policy}${q.error === undefined ? '' : ` (${q.error})`}`);
        }
      }
    }
    return failed ? 1 : 0;
  },
};
