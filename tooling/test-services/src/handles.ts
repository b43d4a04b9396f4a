import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { runServicesScript } from './exec.js';
import { tcpConnect } from './probe.js';

/** A disposable service owned by one test (file); never one of the shared services. */
export interface ServiceHandle {
  /** "127.0.0.1:port" */
  address: string;
  /** Graceful stop (rabbitmqctl stop / redis SHUTDOWN NOSAVE). */
  stop(): Promise<void>;
  /** SIGKILL, then wait until the process is gone. */
  kill(): Promise<void>;
  /** (Re)start after stop/kill, same port and data directory; waits until it answers. */
  start(): Promise<void>;
  /** SIGSTOP: the port still accepts connections but nothing answers. */
  pause(): Promise<void>;
  /** SIGCONT after pause(). */
  resume(): Promise<void>;
}

const START_TIMEOUT_MS = 180_000;
const STOP_TIMEOUT_MS = 120_000;
const QUICK_TIMEOUT_MS = 15_000;

/** Ports of the shared services (scripts/services.sh up); fault tests must never touch them. */
const SHARED_PORTS = new Set([5672, 5673, 5674, 6379, 6380]);

function sharedPorts(): Set<number> {
  const ports = new Set(SHARED_PORTS);
  for (const name of ['BEETLE_TEST_SERVERS', 'BEETLE_TEST_REDIS', 'BEETLE_TEST_REDIS_REPLICA']) {
    for (const address of (process.env[name] ?? '').split(',')) {
      const port = Number(address.trim().split(':').pop());
      if (Number.isInteger(port) && port > 0) ports.add(port);
    }
  }
  return ports;
}

export function checkDisposablePort(kind: string, port: number): void {
  if (!Number.isInteger(port) || port < 1024 || port > 65535) {
    throw new Error(`${kind}: invalid port ${port}`);
  }
  if (sharedPorts().has(port)) {
    throw new Error(
      `${kind}: port ${port} belongs to a shared test service; use another port for disposable instances`,
    );
  }
}

/**
 * True while the process exists and is not a zombie (orphans may linger unreaped). A killed
 * multi-threaded process (beam) shows its leader as a zombie while the other threads still exit
 * and hold its sockets, so a zombie with more than one task still counts as alive.
 */
function isAlive(pid: number): boolean {
  if (existsSync('/proc/self/stat')) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      if (state !== 'Z' && state !== 'X') return true;
      return readdirSync(`/proc/${pid}/task`).length > 1;
    } catch {
      return false;
    }
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function makeHandle(
  kind: 'broker' | 'redis' | 'sentinel',
  port: number,
  startArgs: readonly string[],
): ServiceHandle {
  const address = `127.0.0.1:${port}`;
  const label = `${kind === 'broker' ? 'rabbitmq' : kind} ${address}`;

  const pid = async (): Promise<number> => {
    const { stdout } = await runServicesScript([`pid-${kind}`, String(port)], QUICK_TIMEOUT_MS);
    const value = Number(stdout.trim());
    if (!Number.isInteger(value) || value <= 0)
      throw new Error(`${label}: unexpected pid "${stdout.trim()}"`);
    return value;
  };

  const signal = async (sig: NodeJS.Signals): Promise<number> => {
    const target = await pid();
    process.kill(target, sig);
    return target;
  };

  return {
    address,
    async start() {
      await runServicesScript([`start-${kind}`, String(port), ...startArgs], START_TIMEOUT_MS);
    },
    async stop() {
      await runServicesScript([`stop-${kind}`, String(port)], STOP_TIMEOUT_MS);
    },
    async kill() {
      const target = await signal('SIGKILL');
      const deadline = Date.now() + QUICK_TIMEOUT_MS;
      const refused = (): Promise<boolean> =>
        tcpConnect(address, 200).then(
          () => false,
          () => true,
        );
      // Gone means: process exited and its port no longer accepts connections.
      while (isAlive(target) || !(await refused())) {
        if (Date.now() > deadline) throw new Error(`${label}: still alive after SIGKILL (pid ${target})`);
        await sleep(50);
      }
    },
    async pause() {
      await signal('SIGSTOP');
    },
    async resume() {
      await signal('SIGCONT');
    },
  };
}

/** A TLS listener next to the plain one, with the files of `createTlsFiles` (ca.pem, server-cert.pem, ...). */
export interface TlsListener {
  readonly port: number;
  /** Directory holding ca.pem, server-cert.pem and server-key.pem. */
  readonly certDir: string;
}

function tlsArgs(kind: string, tls: TlsListener | undefined): string[] {
  if (tls === undefined) return [];
  checkDisposablePort(kind, tls.port);
  return ['--tls', String(tls.port), tls.certDir];
}

/**
 * Starts a disposable RabbitMQ node on 127.0.0.1:amqpPort (management on "1"+port, Erlang
 * distribution on amqpPort+20000) via `scripts/services.sh start-broker`. Takes ~6-10 s.
 * `tls` adds an amqps listener; `verifyPeer` makes it demand a client certificate signed by the CA.
 */
export async function startBroker(
  amqpPort: number,
  opts: { tls?: TlsListener & { verifyPeer?: boolean } } = {},
): Promise<ServiceHandle> {
  checkDisposablePort('startBroker', amqpPort);
  if (amqpPort > 9999)
    throw new Error(`startBroker: port ${amqpPort} too large, management port is "1"+port`);
  const args = [...tlsArgs('startBroker', opts.tls), ...(opts.tls?.verifyPeer ? ['--verify-peer'] : [])];
  const handle = makeHandle('broker', amqpPort, args);
  await handle.start();
  return handle;
}

/**
 * Starts a disposable Redis (no persistence) on 127.0.0.1:port, optionally as a replica; `tls` adds a TLS
 * port (no client certificates required).
 */
export async function startRedis(
  port: number,
  opts: { replicaOf?: string; tls?: TlsListener } = {},
): Promise<ServiceHandle> {
  checkDisposablePort('startRedis', port);
  const args = [
    ...(opts.replicaOf ? ['--replicaof', opts.replicaOf] : []),
    ...tlsArgs('startRedis', opts.tls),
  ];
  const handle = makeHandle('redis', port, args);
  await handle.start();
  return handle;
}
