import net from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

/** Parses "host:port" (IPv6 hosts may be bracketed: "[::1]:5672"). */
export function parseAddress(address: string): HostPort {
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const port = Number(address.slice(colon + 1));
  if (colon <= 0 || host === '' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid address "${address}", expected host:port`);
  }
  return { host, port };
}

export interface ExchangeOptions {
  timeoutMs: number;
  /** Resolve once the bytes received so far satisfy this; without it, resolve on connect. */
  until?: (received: Buffer) => boolean;
}

/**
 * Opens a TCP connection, writes `payload` (if any) and resolves with the bytes received once
 * `until` is satisfied. Rejects on connection errors, early close or timeout; always closes the socket.
 */
export function exchange(
  address: string,
  payload: Buffer | string | undefined,
  opts: ExchangeOptions,
): Promise<Buffer> {
  const { host, port } = parseAddress(address);
  return new Promise<Buffer>((resolve, reject) => {
    let received = Buffer.alloc(0);
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(received);
    };
    const timer = setTimeout(() => {
      finish(new Error(`${address}: no answer within ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    socket.once('connect', () => {
      if (payload !== undefined) socket.write(payload);
      if (!opts.until) finish(undefined);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (opts.until?.(received)) finish(undefined);
    });
    socket.once('error', (error: Error) => {
      finish(new Error(`${address}: ${error.message}`, { cause: error }));
    });
    socket.once('close', () => {
      finish(new Error(`${address}: connection closed after ${received.length} bytes`));
    });
  });
}

/** Resolves when a TCP connection to the address can be opened. */
export async function tcpConnect(address: string, timeoutMs = 1000): Promise<void> {
  await exchange(address, undefined, { timeoutMs });
}

/** AMQP 0-9-1 protocol header a client sends first. */
export const AMQP_PROTOCOL_HEADER = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1]);

/**
 * Sends the AMQP 0-9-1 protocol header and checks the broker answers with a connection.start
 * method frame (frame type 1, channel 0, class 10, method 10).
 */
export async function probeAmqp(address: string, timeoutMs = 2000): Promise<void> {
  const reply = await exchange(address, AMQP_PROTOCOL_HEADER, { timeoutMs, until: (b) => b.length >= 11 });
  const ok =
    reply[0] === 1 &&
    reply.readUInt16BE(1) === 0 &&
    reply.readUInt16BE(7) === 10 &&
    reply.readUInt16BE(9) === 10;
  if (!ok) {
    throw new Error(
      `${address}: not an AMQP 0-9-1 broker (reply starts with ${reply.subarray(0, 11).toString('hex')})`,
    );
  }
}

/** Sends PING (inline command) and resolves with the first reply line, e.g. "+PONG". */
export async function redisCommand(address: string, command: string, timeoutMs = 2000): Promise<string> {
  const reply = await exchange(address, `${command}\r\n`, { timeoutMs, until: (b) => b.includes('\r\n') });
  return reply.toString('utf8').split('\r\n')[0] ?? '';
}

/** Resolves when Redis answers PING with +PONG. */
export async function probeRedis(address: string, timeoutMs = 2000): Promise<void> {
  const line = await redisCommand(address, 'PING', timeoutMs);
  if (line !== '+PONG') throw new Error(`${address}: PING answered "${line}" instead of +PONG`);
}

/** A TCP port nothing listens on right now (bound to 127.0.0.1, then released), for a disposable service. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
