/**
 * The placement rules on fake brokers (logic only; the integration tests run them against real brokers):
 * attempts per broker, dead marking, outcome-unknown copies, bad input, readiness before a redundant copy.
 */
import { describe, expect, it } from 'vitest';
import {
  BrokerError,
  createConfig,
  InvalidPublishError,
  NoMessageSentError,
  silentLogger,
  Topology,
} from '@beetle/core';
import { systemClock, TypedEmitter } from '@beetle/core/kit';
import type { BrokerTarget, Prepared } from '../src/broker-target.js';
import { Placement, type Placed } from '../src/placement.js';
import { Rotation } from '../src/rotation.js';
import type { Throttle } from '../src/throttle.js';
import type { PublisherEvents } from '../src/types.js';

type Outcome = 'ok' | 'closed' | 'unknown' | 'invalid';

const failure = (server: string, outcome: Outcome): Error | undefined => {
  switch (outcome) {
    case 'ok':
      return undefined;
    case 'closed':
      return new BrokerError('broker-closed', server, 'publish channel closed');
    case 'unknown':
      return new BrokerError('broker-closed', server, 'publish channel closed', { outcomeUnknown: true });
    case 'invalid':
      return new InvalidPublishError('message', 'amqplib cannot encode the message');
  }
};

/** A broker whose sends (and set-ups) go as scripted, the last outcome repeating. */
class FakeTarget {
  ready = true;
  private sends = 0;
  private prepares = 0;

  constructor(
    readonly server: string,
    private readonly log: string[],
    private readonly sendOutcomes: Outcome[] = ['ok'],
    private readonly prepareOutcomes: Outcome[] = ['ok'],
  ) {}

  isReady(): boolean {
    return this.ready;
  }

  send(prepared: Prepared): Promise<void> {
    const outcome = this.sendOutcomes[Math.min(this.sends++, this.sendOutcomes.length - 1)]!;
    const { flags } = prepared.message.properties.headers;
    this.log.push(`send ${this.server} flags ${typeof flags === 'string' ? flags : '?'} ${outcome}`);
    const error = failure(this.server, outcome);
    return error ? Promise.reject(error) : Promise.resolve();
  }

  prepare(): Promise<void> {
    const outcome = this.prepareOutcomes[Math.min(this.prepares++, this.prepareOutcomes.length - 1)]!;
    this.log.push(`prepare ${this.server} ${outcome}`);
    const error = failure(this.server, outcome);
    if (error === undefined) this.ready = true;
    return error ? Promise.reject(error) : Promise.resolve();
  }

  forget(): void {
    this.log.push(`forget ${this.server}`);
  }
}

function setup(brokers: Record<string, { send?: Outcome[]; prepare?: Outcome[]; ready?: boolean }>) {
  const servers = Object.keys(brokers);
  const config = createConfig({ servers });
  const log: string[] = [];
  const events = new TypedEmitter<PublisherEvents>(silentLogger);
  for (const event of ['failover', 'brokerDead'] as const) {
    events.on(event, (e) => log.push(`${event} ${e.server}`));
  }
  const targets = new Map(
    servers.map((server) => {
      const target = new FakeTarget(server, log, brokers[server]!.send, brokers[server]!.prepare);
      target.ready = brokers[server]!.ready ?? true;
      return [server, target as unknown as BrokerTarget];
    }),
  );
  // Random 0: the rotation starts at the first server.
  const rotation = new Rotation(servers, 10, events, silentLogger, systemClock, () => 0);
  const throttle = { throttled: false, wait: () => Promise.resolve() } as unknown as Throttle;
  const placement = new Placement({
    config,
    targets,
    rotation,
    throttle,
    events,
    logger: silentLogger,
    clock: systemClock,
    now: undefined,
  });
  const place = (redundant: boolean): Promise<Placed> => {
    const topology = new Topology().registerQueue('q').registerMessage('m', { exchange: 'q', redundant });
    return placement.place(topology.message('m'), 'payload', {}, Date.now() + 10_000);
  };
  return { place, log, rotation };
}

describe('Placement', () => {
  it('non-redundant: the same broker once more, then the next; the second failure marks it dead', async () => {
    const t = setup({ a: { send: ['closed'] }, b: {} });
    const placed = await t.place(false);
    expect(placed.servers).toEqual(['b']);
    expect(t.log).toEqual([
      'send a flags 0 closed',
      'forget a',
      'failover a',
      'send a flags 0 closed',
      'forget a',
      'failover a',
      'brokerDead a',
      'send b flags 0 ok',
    ]);
    expect(t.rotation.deadServers()).toEqual(['a']);
  });

  it('non-redundant: two attempts for each configured broker at most, then NoMessageSentError with every error', async () => {
    const t = setup({ a: { send: ['closed'] }, b: { send: ['closed'] }, c: { send: ['closed'] } });
    const error = await t.place(false).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NoMessageSentError);
    expect((error as NoMessageSentError).errors).toHaveLength(6);
    expect(t.log.filter((line) => line.startsWith('send'))).toHaveLength(6);
    expect(t.rotation.deadServers().sort()).toEqual(['a', 'b', 'c']);
  });

  it('non-redundant: an outcome-unknown failure is retried (at least once, the same message)', async () => {
    const t = setup({ a: { send: ['unknown', 'ok'] }, b: {} });
    const placed = await t.place(false);
    expect(placed.servers).toEqual(['a']);
    expect(t.log.filter((line) => line.startsWith('send'))).toEqual([
      'send a flags 0 unknown',
      'send a flags 0 ok',
    ]);
  });

  it('bad input: rejected as it is, no failover, nothing marked dead', async () => {
    for (const redundant of [false, true]) {
      const t = setup({ a: { send: ['invalid'] }, b: { send: ['invalid'] } });
      await expect(t.place(redundant)).rejects.toBeInstanceOf(InvalidPublishError);
      expect(t.log.filter((line) => !line.startsWith('send'))).toEqual([]);
      expect(t.rotation.deadServers()).toEqual([]);
    }
  });

  it('redundant, fast path: a copy whose outcome is unknown is not placed again, anywhere', async () => {
    const t = setup({ a: { send: ['unknown', 'ok'] }, b: {}, c: {} });
    const placed = await t.place(true);
    expect({ servers: placed.servers, redundant: placed.redundant }).toEqual({
      servers: ['b'],
      redundant: true,
    });
    expect(t.log.filter((line) => line.startsWith('send'))).toEqual([
      'send a flags 1 unknown',
      'send b flags 1 ok',
    ]);
  });

  it('redundant, fast path: a copy that failed before it was written goes on: same broker, then an unused one', async () => {
    const t = setup({ a: { send: ['closed'] }, b: {}, c: {} });
    const placed = await t.place(true);
    expect(placed.servers).toEqual(['b', 'c']);
    expect(t.log.filter((line) => line.startsWith('send'))).toEqual([
      'send a flags 1 closed',
      'send b flags 1 ok',
      'send a flags 1 closed',
      'send c flags 1 ok',
    ]);
    expect(t.rotation.deadServers()).toEqual(['a']);
  });

  it('redundant, slow path: both brokers are made ready before any copy goes out flagged "1"', async () => {
    const t = setup({ a: { ready: false, prepare: ['closed'] }, b: { ready: false } });
    const placed = await t.place(true);
    // a never got ready: the message goes out once, flags "0", and nothing flagged "1" was sent.
    expect({ servers: placed.servers, redundant: placed.redundant }).toEqual({
      servers: ['b'],
      redundant: false,
    });
    expect(t.log.filter((line) => line.startsWith('send'))).toEqual(['send b flags 0 ok']);
    expect(t.log.filter((line) => line.startsWith('prepare'))).toEqual([
      'prepare a closed',
      'prepare b ok',
      'prepare a closed',
    ]);
    expect(t.rotation.deadServers()).toEqual(['a']);
  });

  it('redundant, slow path: with both ready, both copies go out flagged "1"', async () => {
    const t = setup({ a: { ready: false }, b: { ready: false } });
    const placed = await t.place(true);
    expect([...placed.servers].sort()).toEqual(['a', 'b']);
    expect(placed.redundant).toBe(true);
    expect(t.log.filter((line) => line.startsWith('send')).sort()).toEqual([
      'send a flags 1 ok',
      'send b flags 1 ok',
    ]);
  });
});
