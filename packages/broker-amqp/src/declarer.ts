import type { Channel, Options } from 'amqplib';
import { Topology, type ExchangeDefinition, type QueueDefinition } from '@beetle/core';
import { roundTrip, type Link } from './link.js';
import type { TopologyDeclarer } from './types.js';

/** The channel declarations go out on, and its connection (whose operation timeout bounds them). */
export interface DeclarationTarget {
  readonly channel: Channel;
  readonly link: Link;
}

/** Declarations exactly as Ruby Beetle makes them (reference §5.5, §12), each a bounded round trip. */
export class AmqpDeclarer implements TopologyDeclarer {
  /** @param target the channel to declare on, found (or reopened) for every declaration */
  constructor(private readonly target: () => Promise<DeclarationTarget>) {}

  private async op<T>(what: string, run: (channel: Channel) => Promise<T>): Promise<T> {
    const { channel, link } = await this.target();
    return roundTrip(link, what, () => run(channel));
  }

  async declareExchange(exchange: ExchangeDefinition): Promise<void> {
    const options: Options.AssertExchange = {
      durable: true,
      autoDelete: exchange.autoDelete,
      internal: exchange.internal,
    };
    if (exchange.arguments !== undefined) options.arguments = exchange.arguments;
    await this.op(`exchange.declare ${exchange.name}`, (ch) =>
      ch.assertExchange(exchange.name, 'topic', options),
    );
  }

  async declareQueue(queue: QueueDefinition): Promise<void> {
    const options: Options.AssertQueue = { durable: true, exclusive: false, autoDelete: queue.autoDelete };
    if (queue.arguments !== undefined) options.arguments = queue.arguments;
    await this.op(`queue.declare ${queue.amqpName}`, (ch) => ch.assertQueue(queue.amqpName, options));
    if (queue.deadLettering) {
      const dlq = Topology.deadLetterQueueName(queue.amqpName);
      await this.op(`queue.declare ${dlq}`, (ch) => ch.assertQueue(dlq, options));
    }
  }

  async bindQueue(queue: string, exchange: string, key: string): Promise<void> {
    await this.op(`queue.bind ${queue} ${exchange} ${key}`, (ch) => ch.bindQueue(queue, exchange, key));
  }

  async queueLength(queue: string): Promise<number> {
    const ok = await this.op(`queue.declare passive ${queue}`, (ch) => ch.checkQueue(queue));
    return ok.messageCount;
  }

  async purgeQueue(queue: string): Promise<void> {
    await this.op(`queue.purge ${queue}`, (ch) => ch.purgeQueue(queue));
  }
}
