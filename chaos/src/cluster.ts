/**
 * The services a chaos run owns: N RabbitMQ brokers and a Redis master + replica, all disposable instances on
 * their own ports (never the machine's 5672-5674 / 6379 / 6380), plus the redis master file the consumers read.
 */
import { renameSync, writeFileSync } from 'node:fs';
import {
  probeAmqp,
  probeRedis,
  redisCommand,
  startBroker,
  startRedis,
  type ServiceHandle,
} from '@beetle/test-services';

export interface ClusterPorts {
  /** AMQP ports of the brokers (management "1"+port, Erlang distribution port+20000). */
  readonly brokers: readonly number[];
  /** Redis master, then replica. */
  readonly redis: readonly [number, number];
}

/** Ports of the machine's own services, which a chaos run must never touch. */
const FORBIDDEN_PORTS = new Set([5672, 5673, 5674, 6379, 6380]);

export const DEFAULT_PORTS: ClusterPorts = { brokers: [5690, 5691, 5692], redis: [6397, 6398] };

/** Ports derived from a base AMQP port: brokers base..base+n-1, Redis 6397/6398 shifted by the same offset. */
export function portsFrom(baseAmqpPort: number, brokers = 3): ClusterPorts {
  const offset = baseAmqpPort - 5690;
  const ports: ClusterPorts = {
    brokers: Array.from({ length: brokers }, (_, i) => baseAmqpPort + i),
    redis: [6397 + offset, 6398 + offset],
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
  ) {}

  /** Starts every service (brokers in parallel) and writes the master file. */
  static async start(ports: ClusterPorts, masterFile: string, log: Log): Promise<Cluster> {
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
    const cluster = new Cluster(
      ports,
      brokerHandles.map((handle, index) => ({ index, address: handle.address, handle, state: 'up' })),
      master,
      replica,
      masterFile,
      log,
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
