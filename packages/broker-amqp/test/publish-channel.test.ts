import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@beetle/core';
import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { config, drain, raw, servers, uid } from './helpers.js';

const server = servers[0]!;
const opened: BrokerConnection[] = [];
const queues: string[] = [];

function connection(input: Parameters<typeof config>[0] = {}): BrokerConnection {
  const c = new BrokerConnection(
    brokerOptions(config({ ...input, servers: [server] }), server, silentLogger),
  );
  opened.push(c);
  return c;
}

async function queue(): Promise<string> {
  const name = `bt-pch-${uid()}`;
  queues.push(name);
  await raw(server, (ch) => ch.assertQueue(name, { durable: false }));
  return name;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
  const names = queues.splice(0);
  await raw(server, async (ch) => {
    for (const name of names) await ch.deleteQueue(name).catch(() => undefined);
  });
});

/** What slips past the publisher's validation: amqplib throws while encoding, after queueing the confirm. */
const unencodable: [string, Record<string, unknown>][] = [
  ['a bigint header', { headers: { id: 10n } }],
  ['a 256-byte message id', { messageId: 'x'.repeat(256) }],
  ['priority 256', { priority: 256 }],
  ['a header name of 256 bytes', { headers: { ['k'.repeat(256)]: 1 } }],
];

describe('AmqpPublishChannel with a publish amqplib cannot encode', () => {
  it.each(unencodable)(
    '%s: rejects at once as a caller error; the next confirms stay in step (no stall, no kill)',
    async (_what, properties) => {
      const name = await queue();
      // operationTimeout 3 s: a confirm matched to the wrong publish shows as a 3 s stall and a killed connection.
      const c = connection({ publisherReadResponseTimeout: 3 });
      const lost: unknown[] = [];
      c.onLost((event) => lost.push(event));
      const channel = await c.publishChannel();
      const started = Date.now();
      const error = await channel.publish('', name, Buffer.from('bad'), properties).then(
        () => undefined,
        (e: unknown) => e as { name?: string; reason?: string; outcomeUnknown?: boolean },
      );
      const rejectedAfterMs = Date.now() - started;
      const good: string[] = [];
      const slow: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = Date.now();
        await channel.publish('', name, Buffer.from(`good-${i}`), { messageId: `good-${i}` }).then(
          () => good.push('confirmed'),
          (e: unknown) => good.push(String((e as { reason?: string }).reason)),
        );
        if (Date.now() - t >= 1000) slow.push(Date.now() - t);
      }
      const messages = (await drain(server, name)).map((m) => m.content.toString());
      // One assertion over everything, so a failure shows the whole picture.
      expect({
        error: { name: error?.name, reason: error?.reason, outcomeUnknown: error?.outcomeUnknown },
        rejectedAtOnce: rejectedAfterMs < 200,
        good,
        slow,
        connectionsLost: lost.length,
        messages,
      }).toEqual({
        error: { name: 'InvalidPublishError', reason: 'invalid-publish', outcomeUnknown: undefined },
        rejectedAtOnce: true,
        good: ['confirmed', 'confirmed', 'confirmed'],
        slow: [],
        connectionsLost: 0,
        messages: ['good-0', 'good-1', 'good-2'],
      });
    },
  );

  it('many publishes in flight around an unencodable one: every good one is confirmed, in order', async () => {
    const name = await queue();
    const c = connection({ publisherReadResponseTimeout: 3 });
    const channel = await c.publishChannel();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) =>
        channel.publish(
          '',
          name,
          Buffer.from(String(i)),
          i % 20 === 10 ? { headers: { n: BigInt(i) } } : { messageId: String(i) },
        ),
      ),
    );
    const rejected = outcomes.flatMap((o, i) => (o.status === 'rejected' ? [i] : []));
    expect(rejected).toEqual([10, 30, 50]);
    for (const i of rejected) {
      expect((outcomes[i] as PromiseRejectedResult).reason).toMatchObject({ reason: 'invalid-publish' });
    }
    const expected = Array.from({ length: 60 }, (_, i) => String(i)).filter((_, i) => i % 20 !== 10);
    expect((await drain(server, name)).map((m) => m.content.toString())).toEqual(expected);
  });

  it('without confirms an unencodable publish is a caller error too', async () => {
    const name = await queue();
    const c = connection({ publisherReadResponseTimeout: 3, publisherConfirms: false });
    const channel = await c.publishChannel();
    await expect(
      channel.publish('', name, Buffer.from('bad'), { headers: { id: 10n } }),
    ).rejects.toMatchObject({ reason: 'invalid-publish' });
    await channel.publish('', name, Buffer.from('good'), {});
    await new Promise((r) => setTimeout(r, 200));
    expect((await drain(server, name)).map((m) => m.content.toString())).toEqual(['good']);
  });
});
