// Over 400 lines on purpose: one concern, queue policies (Ruby's payload, its checks, the management API).
import {
  ConfigurationError,
  PolicyRefusedError,
  PolicyRequestError,
  silentLogger,
  Topology,
  type BeetleConfig,
  type BrokerAddress,
  type Logger,
  type QueueDefinition,
} from '@beetle/core';
import { brokerAddress, errorMessage } from '@beetle/core/kit';

/** Options of one queue policy (Ruby `set_queue_policy!`). */
export interface QueuePolicyOptions {
  readonly lazy: boolean;
  readonly deadLettering: boolean;
  /** `dead-letter-routing-key` (the partner queue of the dead letter cycle). */
  readonly routingKey?: string;
  /** `message-ttl` in milliseconds (only on the dead letter queue). */
  readonly messageTtl?: number;
  /**
   * `delivery-limit` (quorum queues: how often a delivery may be returned before the queue drops or
   * dead-letters it). Beetle installs {@link UNLIMITED_DELIVERIES} for quorum queues so that its own attempt
   * counting rules.
   */
  readonly deliveryLimit?: number;
}

/**
 * The largest `delivery-limit` RabbitMQ accepts in a policy (a signed 32-bit integer; -1 is refused on 3.10):
 * in effect no limit. A queue argument `x-delivery-limit` still wins when lower (RabbitMQ applies the lower).
 */
export const UNLIMITED_DELIVERIES = 2_147_483_647;

/** Whether a queue definition declares a quorum queue (`x-queue-type: quorum`). */
export const isQuorumQueue = (queue: QueueDefinition): boolean =>
  queue.arguments?.['x-queue-type'] === 'quorum';

/** A binding as it travels in the policy update message. */
export interface PolicyBinding {
  readonly exchange: string;
  readonly key: string;
}

/** The JSON body of a policy update message (reference §3.6); keys are Ruby's. */
export interface PolicyUpdatePayload {
  readonly queue_name: string;
  readonly bindings: readonly PolicyBinding[];
  readonly dead_letter_queue_name: string;
  readonly message_ttl: number;
  readonly dead_lettering: boolean;
  readonly lazy: boolean;
  readonly server: string;
  /** Only for quorum queues (not in Ruby's payload, which ignores unknown keys): `"quorum"`. */
  readonly queue_type?: 'quorum';
}

/** What `setQueuePolicy` did. */
export type PolicyAction = 'created' | 'updated' | 'unchanged' | 'deleted' | 'none';

/** Builds the policy update message body for a queue declared on `server`, in Ruby's key order. */
export function policyUpdatePayload(
  server: string,
  queue: QueueDefinition,
  bindings: readonly PolicyBinding[],
): PolicyUpdatePayload {
  return {
    queue_name: queue.amqpName,
    bindings: bindings.map((b) => ({ exchange: b.exchange, key: b.key })),
    dead_letter_queue_name: Topology.deadLetterQueueName(queue.amqpName),
    message_ttl: queue.deadLetteringMsgTtl,
    dead_lettering: queue.deadLettering,
    lazy: queue.lazy,
    server,
    ...(isQuorumQueue(queue) ? { queue_type: 'quorum' as const } : {}),
  };
}

/**
 * One path segment of a management API URL. `encodeURIComponent` leaves `.` alone, and "." and ".." are
 * resolved as dot segments by fetch's URL parser and by RabbitMQ's router even when percent-encoded (`%2E`):
 * `/api/queues/%2F/..` would be `/api/queues/`, another endpoint. So such names (and empty ones) cannot be
 * addressed and are refused before any request.
 */
export function managementPathSegment(value: string, field: string): string {
  if (value === '' || value === '.' || value === '..') {
    throw new PolicyRefusedError(
      field,
      `${field} ${JSON.stringify(value)} cannot be addressed through the RabbitMQ management API (URLs resolve "." and ".." path segments, even percent-encoded)`,
    );
  }
  return encodeURIComponent(value);
}

/**
 * The properties-key segment of a binding URL. RabbitMQ percent-decodes this segment once more (its
 * properties keys are quoted: `a/b` is `a%2Fb`), so the dots of a key "." or ".." are quoted as `%2E` first
 * and survive the URL's dot-segment resolution as `%252E`.
 */
function propertiesKeySegment(key: string): string {
  return encodeURIComponent(key === '.' || key === '..' ? key.replaceAll('.', '%2E') : key);
}

const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The policy definition Ruby Beetle installs (reference §6.6). */
export function policyDefinition(options: QueuePolicyOptions): Record<string, unknown> {
  const definition: Record<string, unknown> = {};
  if (options.deadLettering) {
    definition['dead-letter-routing-key'] = options.routingKey;
    definition['dead-letter-exchange'] = '';
    if (options.messageTtl !== undefined) definition['message-ttl'] = options.messageTtl;
  }
  if (options.lazy) definition['queue-mode'] = 'lazy';
  if (options.deliveryLimit !== undefined) definition['delivery-limit'] = options.deliveryLimit;
  return definition;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

const str = (value: unknown, field: string): string => {
  if (typeof value !== 'string' || value === '') {
    throw new ConfigurationError(
      `policy update: ${field} must be a non-empty string, got ${JSON.stringify(value)}`,
    );
  }
  return value;
};

const isConfiguredServer = (config: BeetleConfig, server: string): boolean =>
  config.servers.includes(server) || config.additionalSubscriptionServers.includes(server);

/** Which queues a policy update worker manages (see `policyUpdateAllowance`). */
export interface PolicyUpdateAllowance {
  /** Whether policy updates for this AMQP queue name are accepted. */
  allows(queue: string): boolean;
  /** A description for messages ("the 3 queues of the topology and ..."). */
  readonly description: string;
  /** No queue is allowed: every update is refused. */
  readonly empty: boolean;
}

/**
 * The queues a policy update worker accepts updates for: the queues of `topology` (AMQP names, not the policy
 * updates queue itself) and the entries of `policyUpdatesAllowedQueues` (comma-separated exact names, `prefix*`,
 * or `*` for every queue).
 */
export function policyUpdateAllowance(config: BeetleConfig, topology?: Topology): PolicyUpdateAllowance {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const entry of config.policyUpdatesAllowedQueues.split(',')) {
    const name = entry.trim();
    if (name === '') continue;
    if (name.endsWith('*')) prefixes.push(name.slice(0, -1));
    else exact.add(name);
  }
  const fromTopology = new Set<string>();
  for (const queue of topology?.queues() ?? []) {
    if (queue.name !== config.beetlePolicyUpdatesQueueName) fromTopology.add(queue.amqpName);
  }
  const parts = [
    ...(fromTopology.size > 0 ? [`the ${fromTopology.size} queues of the topology`] : []),
    ...(exact.size + prefixes.length > 0
      ? [`policy_updates_allowed_queues (${config.policyUpdatesAllowedQueues})`]
      : []),
  ];
  return {
    allows: (queue) =>
      queue !== config.beetlePolicyUpdatesQueueName &&
      (fromTopology.has(queue) || exact.has(queue) || prefixes.some((prefix) => queue.startsWith(prefix))),
    description: parts.length === 0 ? 'no queues' : parts.join(' and '),
    empty: parts.length === 0,
  };
}

const refuse = (field: string, message: string): never => {
  throw new PolicyRefusedError(field, `policy update refused: ${message}`);
};

/**
 * Checks a policy update message (its parsed JSON) before a worker applies it, since anyone who may publish to
 * the policy exchange could otherwise have the worker send its credentials to any host (`server`) or change
 * the policies and bindings of any queue (`queue_name`, `bindings`). Accepted: `server` one of the configured
 * brokers, `queue_name` allowed by `allowance`, `dead_letter_queue_name` absent or `<queue_name>_dead_letter`,
 * well-formed bindings, TTL and flags. Anything else throws `PolicyRefusedError` naming the field.
 */
export function checkPolicyUpdate(
  config: BeetleConfig,
  allowance: PolicyUpdateAllowance,
  payload: unknown,
): PolicyUpdatePayload {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    return refuse('payload', 'the message is not a JSON object');
  }
  const p = payload as Record<string, unknown>;
  const server = p.server;
  if (typeof server !== 'string' || !isConfiguredServer(config, server)) {
    return refuse(
      'server',
      `server ${JSON.stringify(server)} is not one of the configured brokers (servers, additional_subscription_servers)`,
    );
  }
  const queue = p.queue_name;
  if (typeof queue !== 'string' || queue === '' || !allowance.allows(queue)) {
    return refuse(
      'queue_name',
      `queue ${JSON.stringify(queue)} is not managed by this worker (it accepts ${allowance.description})`,
    );
  }
  const dlq = Topology.deadLetterQueueName(queue);
  if (p.dead_letter_queue_name !== undefined && p.dead_letter_queue_name !== dlq) {
    return refuse(
      'dead_letter_queue_name',
      `dead letter queue ${JSON.stringify(p.dead_letter_queue_name)} of ${queue} must be ${JSON.stringify(dlq)}`,
    );
  }
  const rawBindings = p.bindings ?? [];
  if (!Array.isArray(rawBindings)) return refuse('bindings', 'bindings must be a list');
  const bindings = rawBindings.map((b: unknown, i): PolicyBinding => {
    const entry = (typeof b === 'object' && b !== null ? b : {}) as Record<string, unknown>;
    if (typeof entry.exchange !== 'string' || entry.exchange === '') {
      return refuse(`bindings[${i}].exchange`, `bindings[${i}].exchange must be a non-empty string`);
    }
    if (entry.key !== undefined && typeof entry.key !== 'string') {
      return refuse(`bindings[${i}].key`, `bindings[${i}].key must be a string`);
    }
    return { exchange: entry.exchange, key: entry.key ?? '' };
  });
  const ttl = p.message_ttl ?? 0;
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 0) {
    return refuse('message_ttl', `message_ttl must be a non-negative integer, got ${JSON.stringify(ttl)}`);
  }
  for (const flag of ['dead_lettering', 'lazy'] as const) {
    if (p[flag] !== undefined && typeof p[flag] !== 'boolean') {
      return refuse(flag, `${flag} must be a boolean, got ${JSON.stringify(p[flag])}`);
    }
  }
  if (p.queue_type !== undefined && p.queue_type !== 'quorum' && p.queue_type !== 'classic') {
    return refuse(
      'queue_type',
      `queue_type must be "quorum" or "classic", got ${JSON.stringify(p.queue_type)}`,
    );
  }
  return {
    queue_name: queue,
    bindings,
    dead_letter_queue_name: dlq,
    message_ttl: ttl,
    dead_lettering: p.dead_lettering === true,
    lazy: p.lazy === true,
    server,
    ...(p.queue_type === 'quorum' ? { queue_type: 'quorum' as const } : {}),
  };
}

/**
 * Client of the RabbitMQ management HTTP API for Beetle's queue policies: `http(s)://<host>:<"1"+port>`, basic
 * auth with the broker's credentials, vhost and names URL-escaped, every request bounded by
 * `rabbitmqApiReadTimeout`. Unexpected statuses (and network errors, status 0) reject with
 * `PolicyRequestError`.
 */
export class PolicyClient {
  constructor(
    private readonly config: BeetleConfig,
    private readonly logger: Logger = silentLogger,
    private readonly fetchImpl: typeof fetch = fetch,
  ) {}

  /**
   * Installs (or updates, or deletes) the policy `<queue>_policy` with pattern `^<escaped queue>$`. GET first:
   * identical → nothing; definition equal to `brokerDefaultPolicy` → the per-queue policy is deleted (if any).
   * Unlike Ruby, a stale policy is also deleted when neither lazy nor dead lettering is wanted any more.
   */
  async setQueuePolicy(server: string, queue: string, options: QueuePolicyOptions): Promise<PolicyAction> {
    if (!server || !queue) throw new ConfigurationError('setQueuePolicy: server and queue must be given');
    const address = this.address(server);
    const name = `${queue}_policy`;
    const path = `/api/policies/${managementPathSegment(address.vhost, 'vhost')}/${managementPathSegment(name, 'policy')}`;
    const definition = policyDefinition(options);
    const body = {
      pattern: `^${escapeRegExp(queue)}$`,
      priority: this.config.beetlePolicyPriority,
      'apply-to': 'queues',
      definition,
    };
    const wanted = options.deadLettering || options.lazy || options.deliveryLimit !== undefined;
    const isDefault = !wanted || deepEqual(definition, this.config.brokerDefaultPolicy);
    const current = await this.request(address, 'GET', path, undefined, [200, 404]);
    if (isDefault) {
      if (current.status === 404) return 'none';
      await this.request(address, 'DELETE', path, undefined, [200, 204, 404]);
      this.logger.info({ server, queue, policy: name }, `deleted policy ${name}`);
      return 'deleted';
    }
    if (current.status === 200 && typeof current.json === 'object' && current.json !== null) {
      const existing = current.json as Record<string, unknown>;
      if (Object.entries(body).every(([k, v]) => deepEqual(existing[k], v))) return 'unchanged';
    }
    await this.request(address, 'PUT', path, body, [200, 201, 204]);
    this.logger.info({ server, queue, policy: name, definition }, `installed policy ${name}`);
    return current.status === 404 ? 'created' : 'updated';
  }

  /**
   * Ruby `update_queue_properties!`: the dead letter queue's policy first (so nothing lands there without a
   * TTL), then the queue's, then obsolete bindings are removed. Accepts the parsed JSON of a policy message
   * (string keys).
   */
  async updateQueueProperties(
    payload: PolicyUpdatePayload | Readonly<Record<string, unknown>>,
  ): Promise<void> {
    const p = payload as Record<string, unknown>;
    const server = str(p.server, 'server');
    const queue = str(p.queue_name, 'queue_name');
    const dlq =
      typeof p.dead_letter_queue_name === 'string' && p.dead_letter_queue_name !== ''
        ? p.dead_letter_queue_name
        : Topology.deadLetterQueueName(queue);
    const lazy = p.lazy === true;
    const deadLettering = p.dead_lettering === true;
    const messageTtl = typeof p.message_ttl === 'number' ? p.message_ttl : undefined;
    // Quorum queues (and their dead letter queues, declared alike): no delivery limit but Beetle's attempts.
    const limit = p.queue_type === 'quorum' ? { deliveryLimit: UNLIMITED_DELIVERIES } : {};
    await this.setQueuePolicy(server, dlq, {
      lazy,
      deadLettering,
      routingKey: queue,
      ...(messageTtl === undefined ? {} : { messageTtl }),
      ...limit,
    });
    await this.setQueuePolicy(server, queue, { lazy, deadLettering, routingKey: dlq, ...limit });
    // Ruby removes obsolete bindings only when `bindings` is present, which an empty list is not: an empty
    // list would unbind the queue from everything.
    if (Array.isArray(p.bindings) && p.bindings.length > 0) {
      const bindings: PolicyBinding[] = (p.bindings as unknown[]).map((b, i) => {
        const entry = (typeof b === 'object' && b !== null ? b : {}) as Record<string, unknown>;
        return {
          exchange: str(entry.exchange, `bindings[${i}].exchange`),
          key: typeof entry.key === 'string' ? entry.key : '',
        };
      });
      await this.removeObsoleteBindings(server, queue, bindings);
    }
  }

  /**
   * Deletes every binding of `queue` not among `bindings` (compared as strings `exchange`/`key`); the
   * default-exchange binding (source `""`) is ignored. Returns how many were deleted.
   */
  async removeObsoleteBindings(
    server: string,
    queue: string,
    bindings: readonly PolicyBinding[],
  ): Promise<number> {
    const address = this.address(server);
    const vhost = managementPathSegment(address.vhost, 'vhost');
    const q = managementPathSegment(queue, 'queue');
    const response = await this.request(
      address,
      'GET',
      `/api/queues/${vhost}/${q}/bindings`,
      undefined,
      [200],
    );
    const existing = Array.isArray(response.json) ? (response.json as Record<string, unknown>[]) : [];
    const wanted = new Set(bindings.map((b) => JSON.stringify([b.exchange, b.key])));
    let removed = 0;
    for (const binding of existing) {
      const source = typeof binding.source === 'string' ? binding.source : '';
      if (source === '') continue;
      const key = typeof binding.routing_key === 'string' ? binding.routing_key : '';
      if (wanted.has(JSON.stringify([source, key]))) continue;
      const propertiesKey = typeof binding.properties_key === 'string' ? binding.properties_key : key;
      await this.request(
        address,
        'DELETE',
        `/api/bindings/${vhost}/e/${managementPathSegment(source, 'exchange')}/q/${q}/${propertiesKeySegment(propertiesKey)}`,
        undefined,
        [200, 204, 404],
      );
      this.logger.info(
        { server, queue, exchange: source, key },
        `removed obsolete binding ${source} -> ${queue} (${key})`,
      );
      removed++;
    }
    return removed;
  }

  /** GET `/api/queues/<vhost>/<queue>`; `undefined` when the queue does not exist. */
  async queueProperties(server: string, queue: string): Promise<Record<string, unknown> | undefined> {
    const address = this.address(server);
    const path = `/api/queues/${managementPathSegment(address.vhost, 'vhost')}/${managementPathSegment(queue, 'queue')}`;
    const response = await this.request(address, 'GET', path, undefined, [200, 404, 410]);
    return response.status === 200 ? (response.json as Record<string, unknown>) : undefined;
  }

  /**
   * The management API address of a configured broker. The broker's credentials go with every request, so a
   * server that is not one of `servers` + `additionalSubscriptionServers` is refused.
   */
  private address(server: string): BrokerAddress {
    if (!isConfiguredServer(this.config, server)) {
      throw new PolicyRefusedError(
        'server',
        `server ${JSON.stringify(server)} is not one of the configured brokers (servers, additional_subscription_servers)`,
      );
    }
    return brokerAddress(this.config, server);
  }

  private async request(
    address: BrokerAddress,
    method: 'GET' | 'PUT' | 'DELETE',
    path: string,
    body: unknown,
    accept: readonly number[],
  ): Promise<{ status: number; json: unknown }> {
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    const url = `${address.tls ? 'https' : 'http'}://${host}:${address.managementPort}${path}`;
    const headers: Record<string, string> = {
      authorization: `Basic ${Buffer.from(`${address.user}:${address.password}`).toString('base64')}`,
      accept: 'application/json',
    };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response: Response;
    let text: string;
    try {
      response = await this.fetchImpl(url, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(this.config.rabbitmqApiReadTimeout * 1000),
      });
      text = await response.text();
    } catch (error) {
      throw new PolicyRequestError(0, `${method} ${url} failed: ${errorMessage(error)}`, { cause: error });
    }
    if (!accept.includes(response.status)) {
      throw new PolicyRequestError(
        response.status,
        `${method} ${url} answered ${response.status} ${response.statusText}: ${text.slice(0, 300)}`,
      );
    }
    let json: unknown = undefined;
    if (text !== '') {
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
    }
    return { status: response.status, json };
  }
}
