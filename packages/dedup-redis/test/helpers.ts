import { createHash } from 'node:crypto';
import { createServer, Socket, type Server } from 'node:net';
import { Redis } from 'ioredis';
import { parseRedisAddress } from '../src/master.js';

/** The shared test Redis (never stopped or flushed by these tests: every test uses its own random keys). */
export const TEST_REDIS = process.env['BEETLE_TEST_REDIS'] ?? '127.0.0.1:6379';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** Whether something answers PING at `address` (a raw socket, so no client retries get in the way). */
export function redisReachable(address: string, timeoutMs = 1000): Promise<boolean> {
  const { host, port } = parseRedisAddress(address);
  return new Promise((resolve) => {
    const socket = new Socket();
    const finish = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once('error', () => finish(false));
    socket.once('data', (data) => finish(data.toString().startsWith('+PONG')));
    socket.connect(port, host, () => socket.write('PING\r\n'));
  });
}

/**
 * Fails (never skips) when the shared test Redis does not answer, saying where it was looked for: a missing
 * service fails the run, locally and under CI (DEVELOPERS.md).
 */
export async function requireSharedRedis(): Promise<void> {
  if (!(await redisReachable(TEST_REDIS, 3000))) {
    throw new Error(
      `no Redis answers at ${TEST_REDIS} (BEETLE_TEST_REDIS); start it with scripts/services.sh up`,
    );
  }
}

/** A raw client on db 4 for reading and writing keys the way a Ruby consumer does. */
export function rawClient(address = TEST_REDIS, db = 4): Redis {
  const { host, port } = parseRedisAddress(address);
  return new Redis({ host, port, db, maxRetriesPerRequest: 1, lazyConnect: false });
}

interface ProxiedPair {
  client: Socket;
  upstream: Socket;
  dropped: boolean;
}

/**
 * A TCP proxy in front of a Redis whose existing connections can be made to silently drop all traffic (as a
 * broken network path would), while new connections pass.
 */
export class BlackholeProxy {
  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly state: { pairs: Set<ProxiedPair>; accepted: number },
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Connections accepted so far. */
  get connections(): number {
    return this.state.accepted;
  }

  static async start(target: string): Promise<BlackholeProxy> {
    const { host, port } = parseRedisAddress(target);
    const state = { pairs: new Set<ProxiedPair>(), accepted: 0 };
    const server = createServer((client) => {
      const upstream = new Socket();
      const pair: ProxiedPair = { client, upstream, dropped: false };
      state.accepted++;
      state.pairs.add(pair);
      client.on('data', (data) => {
        if (!pair.dropped) upstream.write(data);
      });
      upstream.on('data', (data) => {
        if (!pair.dropped) client.write(data);
      });
      const close = (): void => {
        client.destroy();
        upstream.destroy();
        state.pairs.delete(pair);
      };
      client.on('close', close);
      upstream.on('close', close);
      client.on('error', close);
      upstream.on('error', close);
      upstream.connect(port, host);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    return new BlackholeProxy(
      server,
      typeof address === 'object' && address !== null ? address.port : 0,
      state,
    );
  }

  /** From now on, the connections open so far forward nothing (and are not closed). */
  blackholeExisting(): void {
    for (const pair of this.state.pairs) pair.dropped = true;
  }

  async close(): Promise<void> {
    for (const { client, upstream } of this.state.pairs) {
      client.destroy();
      upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Whether a chunk the client sent carries a call of `script` (EVAL with its source, or EVALSHA with its sha). */
export function callsScript(script: { readonly lua: string }): (data: Buffer) => boolean {
  const sha = createHash('sha1').update(script.lua).digest('hex');
  return (data) => {
    const text = data.toString('latin1');
    return text.includes(sha) || text.includes(script.lua);
  };
}

type ReplyFault = 'reset' | 'withhold';

interface FaultyPair {
  client: Socket;
  upstream: Socket;
  /** Set once the fault hit this connection: the replies from then on are not passed on. */
  fault: ReplyFault | undefined;
}

interface FaultState {
  pairs: Set<FaultyPair>;
  armed: { fault: ReplyFault; match: (data: Buffer) => boolean; hit: (pair: FaultyPair) => void } | undefined;
  /** What the client sent on the faulty connection from the chosen command on: the replies lost with it. */
  lost: Buffer;
  faults: number;
}

/**
 * A TCP proxy in front of a Redis that loses the reply of one chosen command: the command is passed on and
 * runs on the server, but its reply does not reach the client. `reset`: the client's connection is then reset
 * (a connection lost mid-call); `withhold`: it stays open and silent (a master that stalled after running
 * the command). Other connections, and this one before the fault, pass everything.
 */
export class ReplyFaultProxy {
  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly state: FaultState,
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** How many times a reply was lost. */
  get faults(): number {
    return this.state.faults;
  }

  /** The commands whose replies were lost last (the chosen one and those after it on its connection). */
  get lostCommands(): Buffer {
    return this.state.lost;
  }

  static async start(target: string): Promise<ReplyFaultProxy> {
    const { host, port } = parseRedisAddress(target);
    const state: FaultState = { pairs: new Set(), armed: undefined, lost: Buffer.alloc(0), faults: 0 };
    const server = createServer((client) => {
      const upstream = new Socket();
      const pair: FaultyPair = { client, upstream, fault: undefined };
      state.pairs.add(pair);
      client.on('data', (data) => {
        const armed = state.armed;
        if (armed !== undefined && pair.fault === undefined && armed.match(data)) {
          state.armed = undefined;
          state.lost = data;
          pair.fault = armed.fault;
          upstream.write(data, () => armed.hit(pair));
          return;
        }
        if (pair.fault !== undefined) state.lost = Buffer.concat([state.lost, data]);
        upstream.write(data);
      });
      upstream.on('data', (data) => {
        if (pair.fault === undefined) client.write(data);
      });
      const close = (): void => {
        client.destroy();
        upstream.destroy();
        state.pairs.delete(pair);
      };
      client.on('close', close);
      upstream.on('close', close);
      client.on('error', close);
      upstream.on('error', close);
      upstream.connect(port, host);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    return new ReplyFaultProxy(
      server,
      typeof address === 'object' && address !== null ? address.port : 0,
      state,
    );
  }

  /**
   * Loses the reply of the next command for which `match` holds. Resolves once that happened: the command
   * was passed on and, after `settleMs` (time for Redis to run it), the connection reset or left silent.
   */
  loseNextReply(
    match: (data: Buffer) => boolean,
    fault: ReplyFault = 'reset',
    settleMs = 200,
  ): Promise<void> {
    return new Promise((resolve) => {
      this.state.armed = {
        fault,
        match,
        hit: (pair) => {
          setTimeout(() => {
            this.state.faults++;
            if (fault === 'reset') {
              pair.client.resetAndDestroy();
              pair.upstream.destroy();
            }
            resolve();
          }, settleMs);
        },
      };
    });
  }

  async close(): Promise<void> {
    for (const { client, upstream } of this.state.pairs) {
      client.destroy();
      upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
