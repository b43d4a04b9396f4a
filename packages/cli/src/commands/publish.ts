import { randomUUID } from 'node:crypto';
import type { CommandSpec } from '../command.js';
import { durationFlag, listFlag, stringFlag, UsageError } from '../options.js';
import { createClient, jsonFlag, topologyFlag } from './shared.js';

async function readAll(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks);
}

export const publishCommand: CommandSpec = {
  name: 'publish',
  summary: 'publish a message (prints the number of brokers that confirmed it)',
  args: '<message> [body|-]',
  positionals: { min: 1, max: 2 },
  description: `Publishes <message> with the body given, or read from stdin when the body is "-" or missing.
A message not declared in --topology is registered with Ruby's defaults: exchange = key = <message>.
Prints the number of brokers that confirmed the message (1, or 2 for a redundant message when two
brokers are up). Exit status 1 when no broker took it.`,
  flags: {
    ...topologyFlag,
    redundant: { type: 'boolean', description: 'publish to two brokers (flags "1")' },
    ttl: {
      type: 'string',
      value: '<seconds>',
      description: 'time to live (default 86400 or the declared ttl)',
    },
    header: {
      type: 'string',
      multiple: true,
      value: '<k=v>',
      description: 'a header with a string value (repeatable)',
    },
    key: {
      type: 'string',
      value: '<routing key>',
      description: 'routing key (default: declared, else <message>)',
    },
    'message-id': {
      type: 'string',
      value: '<id>',
      description: 'message id (default: a new UUID v4; must not contain ":")',
    },
    queue: {
      type: 'string',
      multiple: true,
      value: '<name>',
      description: 'also declare this queue, bound to the message, so it is kept (repeatable)',
    },
    ...jsonFlag,
  },
  examples: [
    `beetle publish order.created '{"id":42}' --servers rabbit1:5672,rabbit2:5672`,
    'echo hello | beetle publish greeting --redundant --header source=cli --queue greetings',
  ],
  async run(ctx) {
    const [name = '', bodyArg] = ctx.positionals;
    const headers: Record<string, string> = {};
    for (const entry of listFlag(ctx.flags, 'header')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) throw new UsageError(`--header needs k=v, got ${JSON.stringify(entry)}`);
      headers[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    const ttl = durationFlag(ctx.flags, 'ttl');
    if (ttl !== undefined && ttl <= 0) throw new UsageError('--ttl must be positive');
    const messageId = stringFlag(ctx.flags, 'message-id') ?? randomUUID();
    if (messageId === '' || messageId.includes(':')) {
      throw new UsageError(`--message-id must be non-empty and must not contain ":"`);
    }
    const body =
      bodyArg === undefined || bodyArg === '-' ? await readAll(ctx.io.stdin) : Buffer.from(bodyArg);

    const client = await createClient(ctx);
    try {
      if (!client.topology.hasMessage(name)) client.message(name);
      const definition = client.topology.message(name);
      const key = stringFlag(ctx.flags, 'key');
      for (const queue of listFlag(ctx.flags, 'queue')) {
        const binding = { exchange: definition.exchange, key: key ?? definition.key };
        if (queue.includes(':')) throw new UsageError(`queue name ${queue} must not contain ":"`);
        if (client.topology.hasQueue(queue)) client.binding(queue, binding);
        else client.queue(queue, binding);
      }
      const count = await client.publish(name, body, {
        messageId,
        ...(ctx.flags['redundant'] === true ? { redundant: true } : {}),
        ...(ttl === undefined ? {} : { ttl }),
        ...(key === undefined ? {} : { key }),
        ...(Object.keys(headers).length === 0 ? {} : { headers }),
      });
      if (ctx.flags['json'] === true) ctx.print.json({ brokers: count, messageId });
      else ctx.print.out(String(count));
      return count > 0 ? 0 : 1;
    } finally {
      await client.stop();
    }
  },
};
