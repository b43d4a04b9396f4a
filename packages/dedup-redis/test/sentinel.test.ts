import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigurationError, createConfig, type MessageRef } from '@beetle/core';
import { startSentinelGroup, type SentinelGroup } from '@beetle/test-services';
import {
  MasterWatcher,
  parseSentinelUrl,
  RedisDedupStore,
  resolveRedisMaster,
  sentinelTarget,
  withRestarts,
} from '../src/index.js';
import { nowSeconds, rawClient, sleep } from './helpers.js';

// Ports of this file (dedup-redis Sentinel tests): Redis 18310/18311, Sentinels 26390-26392.
const MASTER_PORT = 18310;
const REPLICA_PORT = 18311;
const SENTINEL_PORTS = [26390, 26391, 26392] as const;

/** Until `address` is a replica with its link to the master up (Sentinel reconfigures a returning master). */
async function replicaLinkUp(address: string): Promise<void> {
  const raw = rawClient(address);
  try {
    for (let i = 0; i < 150; i++) {
      const info = await raw.info('replication').catch(() => '');
      if (/role:slave/.test(info) && /master_link_status:up/.test(info)) return;
      await sleep(200);
    }
    throw new Error(`${address} did not become a replica in time`);
  } finally {
    raw.disconnect();
  }
}

const refs = (n: number): MessageRef[] =>
  Array.from({ length: n }, () => ({ queue: 'sentinel-test', uuid: randomUUID() }));

describe('Sentinel settings', () => {
  it('reads sentinel:// URLs and the redisSentinels keys; both at once is ambiguous', () => {
    expect(parseSentinelUrl('sentinel://h1:26379, h2:26380/mymaster', 'pw')).toEqual({
      sentinels: [
        { host: 'h1', port: 26379 },
        { host: 'h2', port: 26380 },
      ],
      masterName: 'mymaster',
      password: 'pw',
    });
    expect(() => parseSentinelUrl('sentinel://h1:26379')).toThrow(ConfigurationError);
    expect(() => parseSentinelUrl('sentinel://h1/name')).toThrow(/host:port/);
    // A master file for Ruby consumers next to the Sentinels for TypeScript ones: the Sentinels win here.
    expect(sentinelTarget({ redisServer: '/etc/beetle/redis-master', redisSentinels: 'a:1,b:2' })).toEqual({
      sentinels: [
        { host: 'a', port: 1 },
        { host: 'b', port: 2 },
      ],
      masterName: 'mymaster',
      password: undefined,
    });
    expect(sentinelTarget({ redisServer: 'localhost:6379' })).toBeUndefined();
    expect(() => sentinelTarget({ redisServer: 'sentinel://a:1/m', redisSentinels: ['b:2'] })).toThrow(
      /name the Sentinels once/,
    );
  });

  it('takes the configuration keys (Ruby-style names in files and the environment)', () => {
    const config = createConfig({
      redisSentinels: '127.0.0.1:26379,127.0.0.1:26380',
      redisSentinelMasterName: 'beetle',
      redisWaitReplicas: 1,
    });
    expect(config.redisSentinels).toEqual(['127.0.0.1:26379', '127.0.0.1:26380']);
    const store = RedisDedupStore.fromConfig(config);
    expect(store.currentServer).toBeUndefined(); // not connected yet: the Sentinels have not been asked
    return store.close();
  });

  it('rejects a WAIT timeout not below the read timeout', () => {
    expect(() => new RedisDedupStore({ waitReplicas: 1, waitTimeout: 5, readTimeout: 5 })).toThrow(
      /waitTimeout/,
    );
  });
});

describe('automatic failover on Redis Sentinel (disposable master, replica, 3 Sentinels)', () => {
  let group: SentinelGroup;

  beforeAll(async () => {
    group = await startSentinelGroup({
      masterPort: MASTER_PORT,
      replicaPort: REPLICA_PORT,
      sentinelPorts: SENTINEL_PORTS,
    });
  }, 120_000);

  afterAll(async () => {
    await group.stop();
  }, 60_000);

  it('store calls wait across kill -9 of the master and go on with the promoted replica; nothing acted on is lost', async () => {
    const oldMaster = await group.currentMaster();
    const store = new RedisDedupStore({
      redisServer: group.url,
      failoverTimeout: 30,
      readTimeout: 2,
      waitReplicas: 1,
      waitTimeout: 0.5,
    });
    try {
      await store.ping();
      expect(store.currentServer).toBe(oldMaster);
      const before = refs(50);
      const params = { expiresAt: nowSeconds() + 600, timeoutAt: nowSeconds() + 600 };
      const claimed = await Promise.all(before.map((ref) => store.claim(ref, params)));
      expect(claimed.every((c) => c.first)).toBe(true);
      await Promise.all(before.slice(0, 25).map((ref) => store.complete(ref)));

      // kill -9, then keep calling: every call waits for the promotion and then succeeds (with no replica
      // connected to the new master until the old one is back, WAIT goes on with none).
      const killed = group.master.address === oldMaster ? group.master : group.replica;
      await killed.kill();
      const started = Date.now();
      const during = refs(20);
      const results = await Promise.all(during.map((ref) => store.claim(ref, params)));
      const waitedMs = Date.now() - started;
      const newMaster = await group.awaitFailover(oldMaster);
      expect(results.every((c) => c.first)).toBe(true);
      expect(waitedMs).toBeGreaterThan(500); // the master was gone: they waited for Sentinel (≈2-3 s)
      expect(store.currentServer).toBe(newMaster);

      // Every claim and completion answered before the kill is on the promoted replica (WAIT 1).
      const again = await Promise.all(before.map((ref) => store.claim(ref, params)));
      again.forEach((result, i) => {
        expect(result.first).toBe(false);
        if (!result.first) expect(result.state.status).toBe(i < 25 ? 'completed' : 'incomplete');
      });
      // The claims made during the failover went to the new master, and only once.
      const duringAgain = await Promise.all(during.map((ref) => store.claim(ref, params)));
      expect(duringAgain.every((c) => !c.first)).toBe(true);
      const raw = rawClient(newMaster);
      try {
        expect(await raw.get(`msgid:sentinel-test:${during[0]!.uuid}:attempts`)).toBe('1');
      } finally {
        raw.disconnect();
      }
      // The old master comes back empty; Sentinel makes it a replica of the new one, and WAIT has it again.
      await killed.start();
      await replicaLinkUp(killed.address);
      const after = refs(10);
      expect((await Promise.all(after.map((ref) => store.claim(ref, params)))).every((c) => c.first)).toBe(
        true,
      );
    } finally {
      await store.close();
    }
  }, 90_000);

  it('the maintenance tools find the master through the Sentinels and start over after a failover', async () => {
    const config = {
      ...createConfig({ redisSentinels: group.sentinels.map((s) => s.address).join(',') }),
      redisSentinelMasterName: group.masterName,
      redisFailoverTimeout: 30,
    };
    const first = await resolveRedisMaster(config);
    expect(first).toBe(await group.currentMaster());
    const watcher = await MasterWatcher.create(config);
    await watcher.check();
    // Wait until the old master is back as a replica, so that the next kill can be failed over.
    const other = first === group.master.address ? group.replica.address : group.master.address;
    await replicaLinkUp(other);
    const killed = group.master.address === first ? group.master : group.replica;
    let runs = 0;
    const seen: string[] = [];
    const result = withRestarts(
      config,
      async (w, connect) => {
        runs++;
        seen.push(w.master);
        const client = await connect(4);
        if (runs === 1) {
          await killed.kill();
          // The run's connection fails (the master is gone): the run starts over on the new master.
          for (;;) {
            await client.call('PING');
            await sleep(100);
          }
        }
        return client.call('PING');
      },
      { onRestart: () => undefined },
    );
    expect(await result).toBeTruthy();
    expect(runs).toBeGreaterThanOrEqual(2);
    expect(seen[0]).toBe(first);
    expect(seen.at(-1)).toBe(await group.currentMaster());
    expect(seen.at(-1)).not.toBe(first);
    await killed.start();
  }, 90_000);
});
