import net from 'node:net';

/** AMQP method frames (type 1) start with class and method ids; `basic.ack` is 60/80. */
const FRAME_METHOD = 1;
const BASIC_ACK = [60, 80] as const;

export interface ConfirmDroppingProxy {
  /** `host:port` to connect to instead of the broker. */
  readonly server: string;
  /** Connections dropped so far, each when the broker's confirm was on its way to the client. */
  readonly dropped: number;
  close(): Promise<void>;
}

/** Shared by several proxies, so that exactly `drops` confirms are lost among all of them. */
export interface DropBudget {
  drops: number;
}

/**
 * A TCP proxy in front of a broker. While `budget.drops > 0` it resets the connection over which a publisher
 * confirm (`basic.ack`) comes back, instead of forwarding the confirm: the broker has stored the message, the
 * client never learns it (an outcome-unknown publish, for real). Everything else passes through unchanged.
 */
export async function confirmDroppingProxy(
  target: string,
  budget: DropBudget,
): Promise<ConfirmDroppingProxy> {
  const [host, port] = [
    target.slice(0, target.lastIndexOf(':')),
    Number(target.slice(target.lastIndexOf(':') + 1)),
  ];
  const sockets = new Set<net.Socket>();
  let dropped = 0;
  const srv = net.createServer((client) => {
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    // Broker → client: parse frame boundaries to spot a basic.ack before it is forwarded.
    let pending: Buffer = Buffer.alloc(0);
    upstream.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let offset = 0;
      while (pending.length - offset >= 7) {
        const type = pending.readUInt8(offset);
        const end = offset + 7 + pending.readUInt32BE(offset + 3) + 1;
        const isAck =
          type === FRAME_METHOD &&
          pending.length - offset >= 11 &&
          pending.readUInt16BE(offset + 7) === BASIC_ACK[0] &&
          pending.readUInt16BE(offset + 9) === BASIC_ACK[1];
        if (isAck && budget.drops > 0) {
          budget.drops--;
          dropped++;
          client.resetAndDestroy();
          upstream.destroy();
          return;
        }
        if (pending.length < end) break;
        offset = end;
      }
      pending = pending.subarray(offset);
      client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const address = srv.address() as net.AddressInfo;
  return {
    server: `127.0.0.1:${address.port}`,
    get dropped() {
      return dropped;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}
