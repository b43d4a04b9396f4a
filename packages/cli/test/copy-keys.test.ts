import { rm } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KEY_SUFFIXES } from '@beetle/core/kit';
import {
  createTlsFiles,
  freePort,
  startRedis,
  type ServiceHandle,
  type TlsFiles,
} from '@beetle/test-services';
import { RedisMaintenanceClient as RespClient } from '@beetle/dedup-redis';
import { run, tempFile, uid } from './helpers.js';

/**
 * `beetle copy-keys` between disposable Redis instances: a source, and a target with `requirepass`, each with a
 * TLS port (private CA) next to its plain one, and a TCP proxy giving the source a second name.
 */
const PASSWORD = `target-${uid()}`;
let files: TlsFiles;
let source: ServiceHandle;
let target: ServiceHandle;
let sourceTls: number;
let targetTls: number;
let src: RespClient;
let dst: RespClient;
let proxy: { address: string; close: () => Promise<void> };

async function tcpProxy(to: string): Promise<{ address: string; close: () => Promise<void> }> {
  const [host, port] = to.split(':');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host, port: Number(port) });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => s.destroy());
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

beforeAll(async () => {
  files = await createTlsFiles();
  const ports = new Set<number>();
  while (ports.size < 4) ports.add(await freePort());
  const [sourcePort, targetPort, a, b] = [...ports] as [number, number, number, number];
  [sourceTls, targetTls] = [a, b];
  [source, target] = await Promise.all([
    startRedis(sourcePort, { tls: { port: sourceTls, certDir: files.dir } }),
    startRedis(targetPort, { tls: { port: targetTls, certDir: files.dir } }),
  ]);
  src = await RespClient.connect(source.address);
  const admin = await RespClient.connect(target.address);
  await admin.call('CONFIG', 'SET', 'requirepass', PASSWORD);
  admin.close();
  dst = await RespClient.connect(target.address, { password: PASSWORD });
  proxy = await tcpProxy(source.address);
}, 60_000);

afterAll(async () => {
  src?.close();
  // The services script stops Redis with a plain SHUTDOWN: no password then.
  await dst?.call('CONFIG', 'SET', 'requirepass', '');
  dst?.close();
  await proxy?.close();
  await Promise.all([source?.stop(), target?.stop()]);
  if (files !== undefined) await rm(files.dir, { recursive: true, force: true });
}, 60_000);

beforeEach(async () => {
  // Disposable instances: flushing them touches nobody else.
  await Promise.all([src.call('FLUSHALL'), dst.call('FLUSHALL')]);
});

const now = (): number => Math.floor(Date.now() / 1000);

/** A message with `status` (TTL 300 s, as `redisStatusKeyExpiryInterval` leaves it), `expires` and `attempts`. */
async function seed(queue: string): Promise<string> {
  const msgId = `msgid:${queue}:${randomUUID()}`;
  await src.call('SET', `${msgId}:status`, 'completed', 'EX', 300);
  await src.call('MSET', `${msgId}:expires`, String(now() + 7200), `${msgId}:attempts`, '1');
  return msgId;
}

async function keysOf(client: RespClient, msgId: string): Promise<string[]> {
  const values = await client.mget(KEY_SUFFIXES.map((s) => `${msgId}:${s}`));
  return KEY_SUFFIXES.filter((_, i) => values[i] !== null);
}

const pttl = async (client: RespClient, key: string): Promise<number> =>
  Number(await client.call('PTTL', key));

const copy = (sourceAddress: string, targetAddress: string, extra: string[] = [], env = {}, stdin?: string) =>
  run(
    [
      'copy-keys',
      '--redis-server',
      sourceAddress,
      '--databases',
      '0',
      '--pause',
      '0',
      '--set',
      'redis_failover_timeout=0',
      '--queue-prefix',
      'q',
      '--target-redis',
      targetAddress,
      ...extra,
    ],
    { env, ...(stdin === undefined ? {} : { stdin }) },
  );

const withPassword = { BEETLE_TARGET_REDIS_PASSWORD: PASSWORD };

describe('copy-keys', () => {
  it('keeps the TTL of keys that have one (a status key kept after cleanup), none for the others', async () => {
    const msgId = await seed(`q${uid()}`);
    // Database 1 of the source: no password, so only the TTLs differ from before.
    const result = await copy(source.address, source.address, ['--target-db', '1']);
    expect(result.stderr).not.toMatch(/^beetle:/m);
    expect(result.code).toBe(0);
    const db1 = await RespClient.connect(source.address, { db: 1 });
    try {
      expect(await keysOf(db1, msgId)).toEqual(['status', 'attempts', 'expires']);
      const ttl = await pttl(db1, `${msgId}:status`);
      expect(ttl).toBeGreaterThan(290_000);
      expect(ttl).toBeLessThanOrEqual(300_000);
      expect(await pttl(db1, `${msgId}:attempts`)).toBe(-1);
      expect(await pttl(db1, `${msgId}:expires`)).toBe(-1);
      expect(await db1.get(`${msgId}:status`)).toBe('completed');
    } finally {
      await db1.call('FLUSHDB');
      db1.close();
    }
    expect(result.stdout).toContain('copied 1 messages (3 keys)');
    expect(result.stdout).toContain('1 keys with their TTL');
  });

  it('takes the target password from the environment, a file or stdin; the flag still works, with a warning', async () => {
    const file = tempFile('target-password', `${PASSWORD}\n`);
    const ways: [string, string[], Record<string, string>, string | undefined][] = [
      ['environment', [], withPassword, undefined],
      ['file', ['--target-password-file', file], {}, undefined],
      ['stdin', ['--target-password-file', '-'], {}, `${PASSWORD}\n`],
      ['flag', ['--target-password', PASSWORD], {}, undefined],
    ];
    for (const [way, extra, env, stdin] of ways) {
      const msgId = await seed(`q${uid()}`);
      const result = await copy(source.address, target.address, extra, env, stdin);
      expect({ way, code: result.code }).toEqual({ way, code: 0 });
      expect(await keysOf(dst, msgId)).toHaveLength(3);
      if (way === 'flag') {
        expect(result.stderr).toMatch(
          /--target-password is deprecated: .*process list.*BEETLE_TARGET_REDIS_PASSWORD/,
        );
      } else {
        expect(result.stderr).not.toMatch(/^beetle:/m);
      }
    }
  });

  it('without the password the target refuses: exit 1, nothing copied', async () => {
    const msgId = await seed(`q${uid()}`);
    const result = await copy(source.address, target.address);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/NOAUTH/);
    expect(await keysOf(dst, msgId)).toEqual([]);
  });

  it.each([
    ['localhost instead of 127.0.0.1', () => source.address.replace('127.0.0.1', 'localhost')],
    ['a TCP proxy in front of the source', () => proxy.address],
  ])('refuses to copy onto the source reached through %s', async (_, targetAddress) => {
    const msgId = await seed(`q${uid()}`);
    const result = await copy(source.address, targetAddress());
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /is the source itself \(127\.0\.0\.1:\d+ db 0: a probe key written to the target/,
    );
    // Untouched: Go's MSET onto the source itself would strip the status key's TTL (it would live forever).
    expect(await pttl(src, `${msgId}:status`)).toBeGreaterThan(290_000);
    expect(await src.call('DBSIZE')).toBe(3);
  });

  it('another database of the same server is not the source', async () => {
    const msgId = await seed(`q${uid()}`);
    const result = await copy(source.address, proxy.address, ['--target-db', '1']);
    expect(result.code).toBe(0);
    const db1 = await RespClient.connect(source.address, { db: 1 });
    try {
      expect(await keysOf(db1, msgId)).toHaveLength(3);
    } finally {
      await db1.call('FLUSHDB');
      db1.close();
    }
  });

  describe('TLS', () => {
    // The CA is private and Node takes extra CAs only at start (NODE_EXTRA_CA_CERTS): verification off, as Ruby
    // Beetle's OPENSSL_SSL_VERIFY_NONE=1 does; the plain connections to TLS ports below fail either way.
    const noVerify = { ...withPassword, OPENSSL_SSL_VERIFY_NONE: '1' };
    const tlsAddress = (port: number): string => `127.0.0.1:${port}`;

    it('with redis_tls, the target is reached over TLS too', async () => {
      const msgId = await seed(`q${uid()}`);
      const result = await copy(
        tlsAddress(sourceTls),
        tlsAddress(targetTls),
        ['--set', 'redis_tls=true'],
        noVerify,
      );
      expect(result.stderr).not.toMatch(/^beetle:/m);
      expect(result.code).toBe(0);
      expect(result.stdout).toContain('(TLS)');
      expect(await keysOf(dst, msgId)).toHaveLength(3);
      // The same with a target without a password (database 1 of the source, through its TLS port).
      const other = await copy(
        tlsAddress(sourceTls),
        tlsAddress(sourceTls),
        ['--set', 'redis_tls=true', '--target-db', '1'],
        { OPENSSL_SSL_VERIFY_NONE: '1' },
      );
      expect(other.stderr).not.toMatch(/^beetle:/m);
      expect(other.code).toBe(0);
      const db1 = await RespClient.connect(source.address, { db: 1 });
      try {
        expect(await keysOf(db1, msgId)).toHaveLength(3);
      } finally {
        await db1.call('FLUSHDB');
        db1.close();
      }
    });

    it('--target-tls sets the target apart from redis_tls, both ways', async () => {
      const first = await seed(`q${uid()}`);
      const plainTarget = await copy(
        tlsAddress(sourceTls),
        target.address,
        ['--set', 'redis_tls=true', '--target-tls', 'false'],
        noVerify,
      );
      expect(plainTarget.code).toBe(0);
      expect(await keysOf(dst, first)).toHaveLength(3);

      await dst.call('FLUSHALL');
      const tlsTarget = await copy(source.address, tlsAddress(targetTls), ['--target-tls', 'true'], noVerify);
      expect(tlsTarget.code).toBe(0);
      expect(await keysOf(dst, first)).toHaveLength(3);
    });

    it('verifies certificates unless OPENSSL_SSL_VERIFY_NONE=1', async () => {
      await seed(`q${uid()}`);
      const result = await copy(
        source.address,
        tlsAddress(targetTls),
        ['--target-tls', 'true'],
        withPassword,
      );
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/self-signed certificate in certificate chain/);
    });
  });
});
