import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NoMessageSentError, PublishTimeoutError, silentLogger, Topology } from '@beetle/core';
import { startBroker, type ServiceHandle } from '@beetle/test-services';
import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { Publisher } from '@beetle/publisher';
import { cleanup, config, drain, servers, uid } from '../../broker-amqp/test/helpers.js';

/** A broker of our own (never the shared 5672/5673): stopped, restarted and blocked by these tests. */
const PORT = 5681;
const disposable = `127.0.0.1:${PORT}`;
const s1 = servers[0]!;
let broker: ServiceHandle;

const run = promisify(execFile);

/** rabbitmqctl against the disposable node, the way scripts/services.sh runs it. */
async function rabbitmqctl(...args: string[]): Promise<void> {
  const dir = `${process.env.BEETLE_SERVICES_DIR ?? '/tmp/beetle-services'}/broker-${PORT}`;
  await run(
    'bash',
    [
      '-c',
      `HOME="$1/home" RABBITMQ_CONF_ENV_FILE="$1/rabbitmq-env.conf" ERL_EPMD_ADDRESS=127.0.0.1 timeout 60 rabbitmqctl -q -n "$(cat "$1/node")" "\${@:2}"`,
      '_',
      dir,
      ...args,
    ],
    { timeout: 70_000 },
  );
}

beforeAll(async () => {
  broker = await startBroker(PORT);
}, 180_000);

afterAll(async () => {
  await broker?.stop();
}, 120_000);

describe('Publisher against a broker that goes away', () => {
  it('a broker stopped mid-stream: confirmed messages are kept, nothing hangs, it rejoins after the retry interval', async () => {
    const name = `bt-stop-${uid()}`;
    const topology = new Topology().registerQueue(name).registerMessage<string, string>(name);
    const p = new Publisher({
      config: config({
        servers: [disposable, s1],
        deadServerRetryInterval: 1,
        publisherReadResponseTimeout: 3,
        publisherConnectTimeout: 2,
        publishTimeout: 10,
      }),
      topology,
    });
    const confirmedOn = new Map<string, string[]>([
      [disposable, []],
      [s1, []],
    ]);
    const recovered: string[] = [];
    p.on('published', (e) => {
      for (const s of e.servers) confirmedOn.get(s)?.push(e.messageId);
    });
    p.on('brokerRecovered', (e) => recovered.push(e.server));
    try {
      let stopping: Promise<void> | undefined;
      let stopped = false;
      const outcomes: ('ok' | 'failed')[] = [];
      let seq = 0;
      const worker = async (): Promise<void> => {
        while (!stopped) {
          const i = seq++;
          const started = Date.now();
          try {
            await p.publish(name, String(i));
            outcomes.push('ok');
          } catch (error) {
            expect(error).toSatisfy(
              (e) => e instanceof NoMessageSentError || e instanceof PublishTimeoutError,
            );
            outcomes.push('failed');
          }
          expect(Date.now() - started).toBeLessThan(11_000);
          if (i === 300) stopping = broker.stop().then(() => void (stopped = true));
        }
      };
      await Promise.all(Array.from({ length: 20 }, worker));
      await stopping;
      // Publishing went on on the other broker while the disposable one was down.
      expect(p.deadServers()).toEqual([disposable]);
      expect(await p.publish(name, 'while-down')).toBe(1);
      const onDisposable = [...(confirmedOn.get(disposable) ?? [])];
      expect(onDisposable.length).toBeGreaterThan(50);

      await broker.start();
      // Every message confirmed by the disposable broker before the stop survived it.
      const kept = new Set((await drain(disposable, name)).map((m) => String(m.properties.messageId)));
      for (const id of onDisposable) expect(kept.has(id)).toBe(true);

      // After deadServerRetryInterval (1 s) it is back in the rotation and confirms again.
      const deadline = Date.now() + 20_000;
      while (!recovered.includes(disposable) && Date.now() < deadline) {
        await p.publish(name, 'after').catch(() => undefined);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(recovered).toContain(disposable);
      expect(p.deadServers()).toEqual([]);
    } finally {
      await p.close({ timeout: 2 });
      await cleanup({ queues: [name], exchanges: [name] });
      await drain(disposable, name).catch(() => undefined);
    }
  }, 120_000);

  it('a blocked publishing connection (memory alarm) makes publish reject within its timeout, never hang', async () => {
    const name = `bt-blocked-${uid()}`;
    const topology = new Topology().registerQueue(name).registerMessage<string, string>(name);
    const p = new Publisher({
      config: config({
        servers: [disposable],
        publisherReadResponseTimeout: 1,
        publishTimeout: 4,
      }),
      topology,
    });
    try {
      expect(await p.publish(name, 'before')).toBe(1);
      await rabbitmqctl('set_vm_memory_high_watermark', '0.000001');
      const started = Date.now();
      const results = await Promise.allSettled(
        Array.from({ length: 5 }, (_, i) => p.publish(name, `blocked-${i}`)),
      );
      const elapsed = Date.now() - started;
      expect(elapsed).toBeLessThan(4600);
      const reasons: string[] = [];
      for (const r of results) {
        expect(r.status).toBe('rejected');
        const reason = (r as PromiseRejectedResult).reason as Error;
        expect(reason instanceof NoMessageSentError || reason instanceof PublishTimeoutError).toBe(true);
        if (reason instanceof NoMessageSentError) {
          reasons.push(...reason.errors.map((e) => String((e as { reason?: string }).reason)));
        }
      }
      // The broker blocked the connection (connection.blocked) or stopped confirming: either way bounded.
      expect(reasons.every((r) => r === 'broker-blocked' || r === 'broker-timeout')).toBe(true);
    } finally {
      await rabbitmqctl('set_vm_memory_high_watermark', '0.4');
      await p.close({ timeout: 2 });
      await drain(disposable, name).catch(() => undefined);
    }
    // Unblocked: publishing works again.
    const again = new Publisher({ config: config({ servers: [disposable] }), topology });
    try {
      expect(await again.publish(name, 'after')).toBe(1);
    } finally {
      await again.close();
      await cleanup({ queues: [name], exchanges: [name] });
      const { raw } = await import('../../broker-amqp/test/helpers.js');
      await raw(disposable, async (ch) => {
        await ch.deleteQueue(name);
        await ch.deleteExchange(name);
      }).catch(() => undefined);
    }
  }, 60_000);

  it('a black-holing broker (SIGSTOP) mid-stream: publishes fail over within the timeouts, none hangs', async () => {
    const name = `bt-paused-${uid()}`;
    const topology = new Topology().registerQueue(name).registerMessage<string, string>(name);
    const p = new Publisher({
      config: config({
        servers: [disposable, s1],
        publisherReadResponseTimeout: 1,
        publisherConnectTimeout: 1,
        publishTimeout: 8,
      }),
      topology,
    });
    const dead: string[] = [];
    p.on('brokerDead', (e) => dead.push(e.server));
    try {
      for (let i = 0; i < 4; i++) expect(await p.publish(name, `warm-${i}`)).toBe(1);
      await broker.pause();
      const started = Date.now();
      const results = await Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => p.publish(name, `m${i}`)),
      );
      const elapsed = Date.now() - started;
      expect(results.every((r) => r.status === 'fulfilled' && r.value === 1)).toBe(true);
      expect(dead).toEqual([disposable]);
      // One confirm timeout (1 s) + one reconnect attempt (connect timeout 1 s) + margin.
      expect(elapsed).toBeLessThan(5000);
    } finally {
      await broker.resume();
      await p.close({ timeout: 2 });
      await cleanup({ queues: [name], exchanges: [name] });
      const { raw } = await import('../../broker-amqp/test/helpers.js');
      await raw(disposable, async (ch) => {
        await ch.deleteQueue(name);
        await ch.deleteExchange(name);
      }).catch(() => undefined);
    }
  }, 60_000);

  it('close() on a paused broker (SIGSTOP) gives up within one operation timeout', async () => {
    const connection = new BrokerConnection(
      brokerOptions(
        config({ servers: [disposable], publisherReadResponseTimeout: 1 }),
        disposable,
        silentLogger,
      ),
    );
    try {
      await connection.publishChannel();
      await connection.openConsumerChannel(1);
      await broker.pause();
      const started = Date.now();
      await connection.close();
      const elapsed = Date.now() - started;
      // channel.close times out after 1 s, then the sockets are destroyed without a second wait.
      expect(elapsed).toBeGreaterThanOrEqual(900);
      expect(elapsed).toBeLessThan(1900);
    } finally {
      await broker.resume();
    }
  }, 30_000);
});
