import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import {
  ConfigurationError,
  type ExchangeOptions,
  type MessageOptions,
  type QueueOptions,
  type Topology,
} from '@beetle/core';

/**
 * Topology declarations as data, for loading from a YAML or JSON file (Ruby's `client.configure` done in
 * a file). Keys may be camelCase or Ruby's snake_case (`dead_lettering`, `amqp_name`, `auto_delete`).
 */
export interface Declarations {
  exchanges?: Record<string, ExchangeOptions>;
  queues?: Record<string, QueueOptions>;
  bindings?: { queue: string; exchange?: string; key?: string }[];
  messages?: Record<string, MessageOptions>;
}

const SECTIONS = ['exchanges', 'queues', 'bindings', 'messages'] as const;

const KEYS: Record<(typeof SECTIONS)[number], readonly string[]> = {
  exchanges: ['autoDelete', 'internal', 'arguments'],
  queues: [
    'exchange',
    'key',
    'amqpName',
    'autoDelete',
    'arguments',
    'lazy',
    'deadLettering',
    'deadLetteringMsgTtl',
  ],
  bindings: ['queue', 'exchange', 'key'],
  messages: [
    'exchange',
    'key',
    'ttl',
    'redundant',
    'persistent',
    'headers',
    'mandatory',
    'priority',
    'replyTo',
  ],
};

const camel = (key: string): string => key.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function options(section: (typeof SECTIONS)[number], where: string, value: unknown): Record<string, unknown> {
  if (value === null || value === undefined) return {};
  if (!isRecord(value)) throw new ConfigurationError(`${where} must be a mapping`, { key: where });
  const result: Record<string, unknown> = {};
  for (const [rawKey, v] of Object.entries(value)) {
    const key = camel(rawKey);
    if (!KEYS[section].includes(key)) {
      throw new ConfigurationError(`${where}: unknown key ${rawKey} (known: ${KEYS[section].join(', ')})`, {
        key: `${where}.${rawKey}`,
      });
    }
    result[key] = v;
  }
  return result;
}

/** Validates declarations read from a file; unknown sections and keys are errors naming them. */
export function parseDeclarations(value: unknown, source = 'declarations'): Declarations {
  if (!isRecord(value)) throw new ConfigurationError(`${source}: top level must be a mapping`);
  const result: Declarations = {};
  for (const [section, body] of Object.entries(value)) {
    if (!(SECTIONS as readonly string[]).includes(section)) {
      throw new ConfigurationError(`${source}: unknown section ${section} (known: ${SECTIONS.join(', ')})`, {
        key: section,
      });
    }
    if (section === 'bindings') {
      if (!Array.isArray(body))
        throw new ConfigurationError(`${source}: bindings must be a list`, { key: section });
      result.bindings = body.map((entry, i) => {
        const b = options('bindings', `${source}: bindings[${i}]`, entry);
        if (typeof b.queue !== 'string') {
          throw new ConfigurationError(`${source}: bindings[${i}] needs a queue`, {
            key: `bindings[${i}].queue`,
          });
        }
        return b as { queue: string; exchange?: string; key?: string };
      });
      continue;
    }
    if (body === null || body === undefined) continue;
    if (!isRecord(body))
      throw new ConfigurationError(`${source}: ${section} must be a mapping`, { key: section });
    const entries = Object.fromEntries(
      Object.entries(body).map(([name, opts]) => [
        name,
        options(section as 'exchanges', `${source}: ${section}.${name}`, opts),
      ]),
    );
    (result as Record<string, unknown>)[section] = entries;
  }
  return result;
}

/** Reads declarations from a `.json` file, or YAML otherwise (Ruby's rule for config files). */
export async function loadDeclarations(path: string): Promise<Declarations> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new ConfigurationError(`cannot read declarations file ${path}`, { cause });
  }
  try {
    return parseDeclarations(path.endsWith('.json') ? JSON.parse(text) : parseYaml(text), path);
  } catch (cause) {
    if (cause instanceof ConfigurationError) throw cause;
    throw new ConfigurationError(`cannot parse declarations file ${path}: ${String(cause)}`, { cause });
  }
}

/** Registers declarations in a topology: exchanges, then queues, bindings and messages. */
export function applyDeclarations(topology: Topology, declarations: Declarations): void {
  for (const [name, opts] of Object.entries(declarations.exchanges ?? {}))
    topology.registerExchange(name, opts);
  for (const [name, opts] of Object.entries(declarations.queues ?? {})) topology.registerQueue(name, opts);
  for (const { queue, ...opts } of declarations.bindings ?? []) topology.registerBinding(queue, opts);
  for (const [name, opts] of Object.entries(declarations.messages ?? {}))
    topology.registerMessage(name, opts);
}
