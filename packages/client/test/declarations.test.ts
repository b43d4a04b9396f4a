import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ConfigurationError, Topology } from '@beetle/core';
import { applyDeclarations, parseDeclarations } from '@beetle/client';

describe('declarations from a file', () => {
  it('accepts Ruby snake_case and camelCase keys and registers everything', () => {
    const declarations = parseDeclarations(
      parse(`
exchanges:
  audit: { auto_delete: false }
queues:
  orders: { exchange: shop, key: "order.#", dead_lettering: true, dead_lettering_msg_ttl: 500 }
  mails:
bindings:
  - { queue: orders, exchange: audit, key: "#" }
messages:
  order.created: { exchange: shop, redundant: true, ttl: 3600 }
`),
    );
    const topology = new Topology();
    applyDeclarations(topology, declarations);
    expect(topology.queue('orders')).toMatchObject({ deadLettering: true, deadLetteringMsgTtl: 500 });
    expect(topology.bindings('orders')).toEqual([
      { queue: 'orders', exchange: 'shop', key: 'order.#' },
      { queue: 'orders', exchange: 'audit', key: '#' },
    ]);
    expect(topology.bindings('mails')).toEqual([{ queue: 'mails', exchange: 'mails', key: 'mails' }]);
    expect(topology.message('order.created')).toMatchObject({ exchange: 'shop', redundant: true, ttl: 3600 });
  });

  it('names unknown sections and keys', () => {
    expect(() => parseDeclarations({ queue: {} }, 'f.yml')).toThrow(/f.yml: unknown section queue/);
    expect(() => parseDeclarations({ queues: { q: { dead_letter: true } } }, 'f.yml')).toThrow(
      ConfigurationError,
    );
    expect(() => parseDeclarations({ queues: { q: { dead_letter: true } } }, 'f.yml')).toThrow(
      /queues.q: unknown key dead_letter/,
    );
    expect(() => parseDeclarations({ bindings: [{ exchange: 'x' }] })).toThrow(/needs a queue/);
    expect(() => parseDeclarations([])).toThrow(/top level must be a mapping/);
  });
});
