/**
 * The services a chaos run owns: N RabbitMQ brokers and a Redis master + replica, all disposable instances on
 * their own ports (never the machine's 5672-5674 / 6379 / 6380), plus the redis master file the consumers read.
 */
import { renameSync, writeFileSync } from 'node:fs';
import {
  awaitSentinelsKnowEachOther,
  probeAmqp,
  probeRedis,
  redisCommand,
  sentinelMaster,
  startBroker,
  startRedis,
  startSentinel,
  type ServiceHandle,
} from '@beetle/test-services';

export interface ClusterPorts {
  /** AMQP ports of the brokers (management "1"+port, Erlang distribution port+20000). */
  readonly brokers: readonly number[];
  /** Redis master, then replica. */
  readonly redis: readonly [number, number];
  /** The three Sentinels of `--redis sentinel` (default: Redis master port + 20010..20012). */
  readonly sentinels?: readonly [number, number, number];
}

/** The master's name at the run's Sentinels. */
export const SENTINEL_MASTER_NAME = 'chaos';

const sentinelPortsOf = (masterPort: number): [number, number, number] => [
  masterPort + 20010,
  masterPort + 20011,
  masterPort + 20012,
];

/** Ports of the machine's own services, which a chaos run must never touch. */
const FORBIDDEN_PORTS = new Set([5672, 5673, 5674, 6379, 6380]);

export const DEFAULT_PORTS: ClusterPorts = {
  brokers: [5690, 5691, 5692],
  redis: [6397, 6398],
  sentinels: sentinelPortsOf(6397),
};

/**
 * Ports derived from a base AMQP port: brokers base..base+n-1, Redis 6397/6398 shifted by the same offset,
 * Sentinels at the Redis master's port + 20010..20012 (26407-26409 for the default base 5690).
 */
export function portsFrom(baseAmqpPort: number, brokers = 3): ClusterPorts {
  const offset = baseAmqpPort - 5690;
  const ports: ClusterPorts = {
    brokers: Array.from({ length: brokers }, (_, i) => baseAmqpPort + i),
    redis: [6397 + offset, 6398 + offset],
    sentinels: sentinelPortsOf(6397 + offset),
  };
  for (const port of [...ports.brokers, ...ports.redis]) {
    if (FORBIDDEN_PORTS.has(port))
      throw new Error(`chaos: port ${port} belongs to the machine's own services`);
  }
  return ports;
}

export type Log = (line: string) => void;

export interface Broker {
  readonly index: number;
  readonly address: string;
  readonly handle: ServiceHandle;
  state: 'up' | 'down' | 'paused';
}

export class Cluster {
  private constructor(
    readonly ports: ClusterPorts,
    readonly brokers: Broker[],
    /** Current Redis master and replica (they swap on a promotion). */
    public master: ServiceHandle,
    public replica: ServiceHandle,
    readonly masterFile: string,
    private readonly log: Log,
    /** With `--redis sentinel`: the Sentinels watching master and replica. */
    readonly sentinels: readonly ServiceHandle[] = [],
  ) {}

  /** `redisServer` of the consumers with Sentinels, else undefined (they read the master file). */
  get sentinelUrl(): string | undefined {
    if (this.sentinels.length === 0) return undefined;
    return `sentinel://${this.sentinels.map((s) => s.address).join(',')}/${SENTINEL_MASTER_NAME}`;
  }

  /** Starts every service (brokers in parallel) and writes the master file; Sentinels with `sentinel`. */
  static async start(
    ports: ClusterPorts,
    masterFile: string,
    log: Log,
    options: { readonly sentinel?: boolean } = {},
  ): Promise<Cluster> {
    for (const port of [...ports.brokers, ...ports.redis]) {
      if (FORBIDDEN_PORTS.has(port))
        throw new Error(`chaos: port ${port} belongs to the machine's own services`);
    }
    const started = Date.now();
    log(
      `starting ${ports.brokers.length} brokers (${ports.brokers.join(', ')}) and redis ${ports.redis.join('/')}`,
    );
    const [masterPort, replicaPort] = ports.redis;
    // Settled one by one so that what did start can be stopped if something else failed.
    const results = await Promise.allSettled([
      ...ports.brokers.map((port) => startBroker(port)),
      startRedis(masterPort).then(async (master) => {
        // A left-over instance may still be a replica (roles swap on a promotion).
        await redisCommand(master.address, 'REPLICAOF NO ONE');
        await redisCommand(master.address, 'FLUSHALL');
        return master;
      }),
    ]);
    const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    const handles = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    let replica: ServiceHandle | undefined;
    if (failures.length === 0) {
      try {
        // A left-over instance (kept services) may be a master after a promotion: point it at the master.
        await redisCommand(`127.0.0.1:${replicaPort}`, `REPLICAOF 127.0.0.1 ${masterPort}`, 1000).catch(
          () => undefined,
        );
        replica = await startRedis(replicaPort, { replicaOf: `127.0.0.1:${masterPort}` });
      } catch (error) {
        failures.push({ status: 'rejected', reason: error });
      }
    }
    if (failures.length > 0 || replica === undefined) {
      await Promise.allSettled(handles.map((h) => h.stop()));
      const reasons = failures.map((f) => (f.reason instanceof Error ? f.reason.message : String(f.reason)));
      throw new Error(`chaos: could not start the services:\n${reasons.join('\n')}`);
    }
    const brokerHandles = handles.slice(0, ports.brokers.length);
    const master = handles[ports.brokers.length] as ServiceHandle;
    let sentinels: ServiceHandle[] = [];
    if (options.sentinel === true) {
      try {
        sentinels = await Promise.all(
          (ports.sentinels ?? sentinelPortsOf(masterPort)).map((port) =>
            startSentinel(port, master.address, { masterName: SENTINEL_MASTER_NAME, downAfterMs: 1000 }),
          ),
        );
        await awaitSentinelsKnowEachOther(
          sentinels.map((s) => s.address),
          SENTINEL_MASTER_NAME,
        );
        log(
          `sentinels ${sentinels.map((s) => s.address).join(', ')} watch ${master.address} as ${SENTINEL_MASTER_NAME}`,
        );
      } catch (error) {
        await Promise.allSettled([...sentinels, ...handles, replica].map((h) => h.stop()));
        throw error;
      }
    }
    const cluster = new Cluster(
      ports,
      brokerHandles.map((handle, index) => ({ index, address: handle.address, handle, state: 'up' })),
      master,
      replica,
      masterFile,
      log,
      sentinels,
    );
    cluster.writeMasterFile(master.address);
    log(`services up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return cluster;
  }

  get servers(): string[] {
    return this.brokers.map((b) => b.address);
  }

  /** Atomically replaces the master file (new inode: the readers see the change at once). */
  writeMasterFile(address: string): void {
    const temp = `${this.masterFile}.tmp`;
    writeFileSync(temp, `${address}\n`);
    renameSync(temp, this.masterFile);
  }

  /** Empties the dedup store (between scenarios on a reused cluster). */
  async flushRedis(): Promise<void> {
    const reply = await redisCommand(this.master.address, 'FLUSHALL');
    if (reply !== '+OK') throw new Error(`FLUSHALL on ${this.master.address}: ${reply}`);
  }

  /**
   * The master crashes (SIGKILL) and an administrator promotes the replica (`REPLICAOF NO ONE`) and rewrites
   * the master file; after `downSeconds` the old master comes back, empty, as a replica of the new one.
   */
  async promoteReplica(downSeconds: number, sleep: (ms: number) => Promise<void>): Promise<void> {
    const oldMaster = this.master;
    const newMaster = this.replica;
    await oldMaster.kill();
    const reply = await redisCommand(newMaster.address, 'REPLICAOF NO ONE');
    if (reply !== '+OK') throw new Error(`REPLICAOF NO ONE on ${newMaster.address}: ${reply}`);
    this.writeMasterFile(newMaster.address);
    this.master = newMaster;
    this.log(`redis ${newMaster.address} promoted, master file rewritten`);
    await sleep(downSeconds * 1000);
    const port = Number(oldMaster.address.split(':')[1]);
    this.replica = await startRedis(port, { replicaOf: newMaster.address });
    this.log(`redis ${this.replica.address} back as a replica of ${newMaster.address}`);
  }

  /**
   * The master crashes (SIGKILL) and the Sentinels promote the replica (nobody else acts); after
   * `downSeconds` (counted from the promotion) the old master comes back, empty, as a replica of the new one,
   * and the step ends once its link is up (so that the next failover has a replica to promote).
   */
  async sentinelFailover(downSeconds: number, sleep: (ms: number) => Promise<void>): Promise<void> {
    if (this.sentinels.length === 0) throw new Error('sentinel-failover needs --redis sentinel');
    const oldMaster = this.master;
    const newMaster = this.replica;
    const killedAt = Date.now();
    await oldMaster.kill();
    const deadline = Date.now() + 60_000;
    for (;;) {
      const named = await Promise.all(
        this.sentinels.map((s) => sentinelMaster(s.address, SENTINEL_MASTER_NAME).catch(() => undefined)),
      );
      if (named.every((n) => n === newMaster.address)) break;
      if (Date.now() > deadline)
        throw new Error(`no Sentinel failover to ${newMaster.address} (${named.join(', ')})`);
      await sleep(100);
    }
    this.master = newMaster;
    this.log(`redis ${newMaster.address} promoted by the Sentinels after ${Date.now() - killedAt} ms`);
    await sleep(downSeconds * 1000);
    const port = Number(oldMaster.address.split(':')[1]);
    this.replica = await startRedis(port, { replicaOf: newMaster.address });
    this.log(`redis ${this.replica.address} back as a replica of ${newMaster.address}`);
  }

  /** Brings everything back up (after a failed fault step): resumes paused and restarts stopped services. */
  async heal(): Promise<void> {
    await Promise.all(
      this.brokers.map(async (broker) => {
        if (broker.state === 'paused') await broker.handle.resume();
        const answers = await probeAmqp(broker.address, 2000).then(
          () => true,
          () => false,
        );
        if (!answers) await broker.handle.start();
        broker.state = 'up';
      }),
    );
    for (const redis of [this.master, this.replica]) {
      await redis.resume().catch(() => undefined);
    }
    await probeRedis(this.master.address, 2000);
  }

  /**
   * Stops every service; errors are collected, not thrown half-way. `kill` SIGKILLs the brokers instead of
   * stopping them gracefully (~1 s instead of ~7-20 s; the next start recovers).
   */
  async stop(options: { kill?: boolean } = {}): Promise<void> {
    this.log(options.kill ? 'killing the services' : 'stopping the services');
    // Sentinels first: they would fail over a master stopped before them.
    await Promise.allSettled(this.sentinels.map((s) => s.stop()));
    const results = await Promise.allSettled([
      ...this.brokers.map(async (broker) => {
        if (broker.state === 'paused') await broker.handle.resume().catch(() => undefined);
        if (options.kill) await broker.handle.kill();
        else await broker.handle.stop();
      }),
      this.replica.stop(),
      this.master.stop(),
    ]);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) {
      throw new Error(
        `chaos: could not stop every service: ${failed.map((f) => String(f.reason)).join('; ')}`,
      );
    }
  }
}
