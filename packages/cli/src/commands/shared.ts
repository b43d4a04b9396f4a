import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { Client, loadDeclarations } from '@beetle/client';
import type { BeetleConfig, BeetleMessage } from '@beetle/core';
import type { CommandContext } from '../command.js';
import { stringFlag, UsageError, type FlagSpecs } from '../options.js';
import { bodyText, errorMessage, jsonReplacer, oneLine } from '../output.js';

export const topologyFlag: FlagSpecs = {
  topology: {
    type: 'string',
    value: '<file>',
    description: 'declarations file (YAML/JSON: exchanges, queues, bindings, messages)',
  },
};

export const jsonFlag: FlagSpecs = {
  json: { type: 'boolean', description: 'print JSON (one object per line)' },
};

export const countFlag: FlagSpecs = {
  count: { type: 'string', value: '<n>', description: 'exit after n messages' },
};

/** A client with the declarations of `--topology` (if given). */
export async function createClient(ctx: CommandContext): Promise<Client> {
  const client = new Client({ config: ctx.config, logger: ctx.logger });
  const file = stringFlag(ctx.flags, 'topology');
  if (file !== undefined) client.configure(await loadDeclarations(file));
  return client;
}

/** Registers `name` as a queue with Ruby's defaults (exchange and key = name) unless it is known. */
export function ensureQueue(client: Client, name: string): void {
  if (name.includes(':')) throw new UsageError(`queue name ${name} must not contain ":"`);
  if (!client.topology.hasQueue(name)) client.queue(name);
}

/** Resolves when `signal` aborts. */
export const aborted = (signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });

/** What `listen`, `trace` (and `--json`) print about a message. */
export function messageRecord(message: BeetleMessage): Record<string, unknown> {
  const { body, encoding } = bodyText(message.body);
  return {
    server: message.server,
    queue: message.queue,
    exchange: message.exchange,
    routingKey: message.routingKey,
    uuid: message.uuid,
    timestamp: message.timestamp,
    redundant: message.redundant,
    expiresAt: message.expiresAt,
    redelivered: message.redelivered,
    headers: message.headers,
    body,
    bodyEncoding: encoding,
  };
}

/** The text form of a message: Ruby's default tracer lines (SERVER, HEADER, EXCHANGE, KEY, MSGID, DATA). */
export function messageLines(message: BeetleMessage): string[] {
  const record = messageRecord(message);
  const expires = new Date(message.expiresAt * 1000).toISOString();
  return [
    `--- ${message.queue} @ ${message.server}`,
    `uuid:        ${message.uuid}`,
    `exchange:    ${message.exchange}`,
    `routing key: ${message.routingKey}`,
    `redundant:   ${message.redundant}`,
    `expires at:  ${message.expiresAt} (${expires})`,
    `headers:     ${JSON.stringify(message.headers, jsonReplacer)}`,
    `body:        ${record.bodyEncoding === 'base64' ? '(base64) ' : ''}${String(record.body)}`,
  ];
}

/** Whether each broker accepts a connection (a publishing connection, closed again). */
export async function probeBrokers(
  config: BeetleConfig,
  servers: readonly string[],
): Promise<{ server: string; error?: string }[]> {
  return Promise.all(
    servers.map(async (server) => {
      const connection = new BrokerConnection(brokerOptions(config, server));
      try {
        await connection.publishChannel();
        return { server };
      } catch (error) {
        return { server, error: oneLine(errorMessage(error)) };
      } finally {
        await connection.close();
      }
    }),
  );
}
