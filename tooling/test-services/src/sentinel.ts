import { setTimeout as sleep } from 'node:timers/promises';

import { checkDisposablePort, makeHandle, startRedis, type ServiceHandle } from './handles.js';
import { exchange } from './probe.js';

/** A disposable Redis master with one replica and three Sentinels watching them (quorum 2). */
export interface SentinelGroup {
  readonly master: ServiceHandle;
  readonly replica: ServiceHandle;
  readonly sentinels: readonly ServiceHandle[];
  /** The name the Sentinels know the master by. */
  readonly masterName: string;
  /** `sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/<name>`, a `redisServer` value. */
  readonly url: string;
  /** `host:port` of the master the first Sentinel that answers names. */
  currentMaster(): Promise<string>;
  /** Resolves once every Sentinel names a master other than `old`, with its address. */
  awaitFailover(old: string, timeoutMs?: number): Promise<string>;
  /** Stops the Sentinels first (so they do not fail over), then both Redis instances. */
  stop(): Promise<void>;
}

/** `SENTINEL get-master-addr-by-name` on one Sentinel: `host:port`, or undefined when it knows none. */
export async function sentinelMaster(
  sentinel: string,
  name: string,
  timeoutMs = 2000,
): Promise<string | undefined> {
  const reply = await exchange(sentinel, `SENTINEL get-master-addr-by-name ${name}\r\n`, {
    timeoutMs,
    // `*2 $n host $n port` has five line ends; `*-1` (unknown name) and `-ERR` one.
    until: (b) =>
      b[0] === 0x2a && b[1] !== 0x2d ? b.toString().split('\r\n').length > 5 : b.includes('\r\n'),
  });
  const lines = reply.toString('utf8').split('\r\n');
  if (lines[0] !== '*2') return undefined;
  return `${lines[2]}:${lines[4]}`;
}

/**
 * Starts one disposable Sentinel on 127.0.0.1:port watching `master` (`host:port`) as `masterName` (quorum
 * 2), the master considered down after `downAfterMs` (default 1000). A fresh configuration at every start.
 */
export async function startSentinel(
  port: number,
  master: string,
  opts: { masterName?: string; downAfterMs?: number } = {},
): Promise<ServiceHandle> {
  checkDisposablePort('startSentinel', port);
  const handle = makeHandle('sentinel', port, [
    master,
    '--name',
    opts.masterName ?? 'beetle',
    '--down-after',
    String(opts.downAfterMs ?? 1000),
  ]);
  await handle.start();
  return handle;
}

/**
 * Starts a master on `masterPort`, its replica on `replicaPort` and three Sentinels on `sentinelPorts`
 * (via `scripts/services.sh start-redis` / `start-sentinel`), the master considered down after `downAfterMs`
 * (default 1000: a `kill -9` is failed over in about 2-3 s). Waits until the Sentinels see each other.
 */
export async function startSentinelGroup(opts: {
  masterPort: number;
  replicaPort: number;
  sentinelPorts: readonly [number, number, number];
  masterName?: string;
  downAfterMs?: number;
}): Promise<SentinelGroup> {
  const masterName = opts.masterName ?? 'beetle';
  for (const port of opts.sentinelPorts) checkDisposablePort('startSentinelGroup', port);
  const master = await startRedis(opts.masterPort);
  const replica = await startRedis(opts.replicaPort, { replicaOf: master.address });
  const sentinels = await Promise.all(
    opts.sentinelPorts.map((port) =>
      startSentinel(port, master.address, {
        masterName,
        ...(opts.downAfterMs === undefined ? {} : { downAfterMs: opts.downAfterMs }),
      }),
    ),
  );
  const addresses = sentinels.map((s) => s.address);
  const currentMaster = async (): Promise<string> => {
    for (const sentinel of addresses) {
      const named = await sentinelMaster(sentinel, masterName).catch(() => undefined);
      if (named !== undefined) return named;
    }
    throw new Error(`no Sentinel of ${addresses.join(',')} names a master ${masterName}`);
  };
  const group: SentinelGroup = {
    master,
    replica,
    sentinels,
    masterName,
    url: `sentinel://${addresses.join(',')}/${masterName}`,
    currentMaster,
    async awaitFailover(old, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const named = await Promise.all(
          addresses.map((s) => sentinelMaster(s, masterName).catch(() => undefined)),
        );
        const [first] = named;
        if (first !== undefined && first !== old && named.every((n) => n === first)) return first;
        if (Date.now() > deadline) {
          throw new Error(
            `no failover from ${old} within ${timeoutMs} ms (Sentinels name ${named.join(', ')})`,
          );
        }
        await sleep(100);
      }
    },
    async stop() {
      await Promise.all(sentinels.map((s) => s.stop()));
      await Promise.all([master.stop(), replica.stop()]);
    },
  };
  await awaitSentinelsKnowEachOther(addresses, masterName);
  return group;
}

/** Until every Sentinel counts the two others (their hello messages go every 2 s): a failover needs them. */
export async function awaitSentinelsKnowEachOther(addresses: readonly string[], name: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const counts = await Promise.all(
      addresses.map(async (sentinel) => {
        const reply = await exchange(sentinel, `SENTINEL sentinels ${name}\r\n`, {
          timeoutMs: 2000,
          until: (b) => b.includes('\r\n'),
        }).catch(() => Buffer.from(''));
        return /^\*(\d+)/.exec(reply.toString('utf8'))?.[1];
      }),
    );
    if (counts.every((c) => c === String(addresses.length - 1))) return;
    if (Date.now() > deadline) throw new Error(`Sentinels ${addresses.join(',')} do not see each other`);
    await sleep(200);
  }
}
