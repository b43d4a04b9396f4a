import {
  ConfigurationError,
  silentLogger,
  type BeetleConfig,
  type Logger,
  type Topology,
} from '@beetle/core';
import { encodeMessage, errorMessage } from '@beetle/core/kit';
import { PolicyClient, policyUpdatePayload, type PolicyUpdatePayload } from './policies.js';
import type { TopologyDeclarer } from './types.js';

/** Something that can publish the policy update message (a `PublishChannel` or a `ConsumerChannel`). */
export interface PolicyMessagePublisher {
  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
  ): Promise<void>;
}

export interface SetupQueueContext {
  /** The broker (`host:port`) the declarer talks to; goes into the policy payload. */
  readonly server: string;
  readonly config: BeetleConfig;
  readonly logger?: Logger;
  /** Tracing mode (Ruby `subscriber.tracing`): no policies, no policy messages. */
  readonly tracing?: boolean;
  /** Synchronous mode: the management API client (default: a new `PolicyClient(config, logger)`). */
  readonly policies?: PolicyClient;
  /** Asynchronous mode (the default): where the policy update message is published. Required in that mode. */
  readonly policyPublisher?: PolicyMessagePublisher;
  /**
   * Optional per-connection memo (e.g. `Memo.run` of `@beetle/core/kit`, cleared when the connection is
   * lost) so the policy exchange/queue are declared once per connection rather than once per queue.
   */
  readonly once?: <T>(key: string, fn: () => Promise<T>) => Promise<T>;
  /** Unix seconds, for the policy message envelope. */
  readonly now?: () => number;
}

export interface SetupQueueResult {
  readonly queue: string;
  readonly server: string;
  /** `applied`: management API (sync mode); `published`: policy message sent; `skipped`: tracing/policy queue. */
  readonly policy: 'applied' | 'published' | 'skipped' | 'failed';
  /** Set when `policy === 'failed'`: the error, already logged at error level. */
  readonly policyError?: unknown;
}

/**
 * Declares a registered queue on one broker the way Ruby Beetle does (reference §5.5, §6.1, §6.6): the queue
 * (and `<queue>_dead_letter` with dead lettering), then its policies — synchronously via the management API
 * when `config.updateQueuePropertiesSynchronously`, otherwise by publishing the policy update message (after
 * declaring `beetle-policies` → `beetle-policy-updates`) —, then the exchanges of its bindings and the bindings.
 * No policy work is done for the policy queue itself or in tracing mode.
 *
 * Error rule: declaration failures (AMQP) reject — the queue is not usable. Policy failures do NOT reject
 * (the queue works without its policy, and a management API outage must not stop publishing): they are logged
 * at error level and returned as `policy: 'failed'` with `policyError`, for the caller to surface.
 */
export async function setupQueue(
  declarer: TopologyDeclarer,
  topology: Topology,
  queueName: string,
  ctx: SetupQueueContext,
): Promise<SetupQueueResult> {
  const { server, config } = ctx;
  const logger = ctx.logger ?? silentLogger;
  const queue = topology.queue(queueName);
  const bindings = topology.bindings(queueName);
  await declarer.declareQueue(queue);

  let policy: SetupQueueResult['policy'] = 'skipped';
  let policyError: unknown;
  if (!ctx.tracing && queue.name !== config.beetlePolicyUpdatesQueueName) {
    const payload = policyUpdatePayload(server, queue, bindings);
    try {
      if (config.updateQueuePropertiesSynchronously) {
        await (ctx.policies ?? new PolicyClient(config, logger)).updateQueueProperties(payload);
        policy = 'applied';
      } else {
        await publishPolicyMessage(declarer, topology, payload, ctx);
        policy = 'published';
      }
    } catch (error) {
      policy = 'failed';
      policyError = error;
      logger.error(
        { server, queue: queue.amqpName, err: error },
        `could not ${config.updateQueuePropertiesSynchronously ? 'apply' : 'publish'} the policies of queue ${queue.amqpName}: ${errorMessage(error)}`,
      );
    }
  }

  for (const exchange of new Set(bindings.map((b) => b.exchange))) {
    await declarer.declareExchange(topology.exchange(exchange));
  }
  for (const binding of bindings) {
    await declarer.bindQueue(queue.amqpName, binding.exchange, binding.key);
  }
  return policy === 'failed'
    ? { queue: queue.amqpName, server, policy, policyError }
    : { queue: queue.amqpName, server, policy };
}

async function publishPolicyMessage(
  declarer: TopologyDeclarer,
  topology: Topology,
  payload: PolicyUpdatePayload,
  ctx: SetupQueueContext,
): Promise<void> {
  const { config } = ctx;
  if (!ctx.policyPublisher) {
    throw new ConfigurationError('setupQueue: asynchronous policy mode needs ctx.policyPublisher', {
      key: 'updateQueuePropertiesSynchronously',
    });
  }
  const declarePolicyQueue = async (): Promise<void> => {
    const policyQueue = topology.hasQueue(config.beetlePolicyUpdatesQueueName)
      ? topology.queue(config.beetlePolicyUpdatesQueueName)
      : undefined;
    if (policyQueue) {
      await declarer.declareQueue(policyQueue);
    }
    await declarer.declareExchange(
      topology.hasExchange(config.beetlePolicyExchangeName)
        ? topology.exchange(config.beetlePolicyExchangeName)
        : {
            name: config.beetlePolicyExchangeName,
            type: 'topic',
            durable: true,
            autoDelete: false,
            internal: false,
            arguments: undefined,
          },
    );
    if (policyQueue) {
      await declarer.bindQueue(
        policyQueue.amqpName,
        config.beetlePolicyExchangeName,
        config.beetlePolicyUpdatesRoutingKey,
      );
    }
  };
  if (ctx.once) await ctx.once('beetle:policy-queue', declarePolicyQueue);
  else await declarePolicyQueue();
  const message = encodeMessage(JSON.stringify(payload), {
    redundant: false,
    persistent: true,
    ...(ctx.now ? { now: ctx.now() } : {}),
  });
  await ctx.policyPublisher.publish(
    config.beetlePolicyExchangeName,
    config.beetlePolicyUpdatesRoutingKey,
    message.body,
    message.properties as unknown as Record<string, unknown>,
  );
}
