import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';

/**
 * Cheap check for a reachable Docker engine (GET /_ping on DOCKER_HOST or /var/run/docker.sock),
 * so testcontainers is only loaded when it can work.
 */
export async function dockerAvailable(timeoutMs = 1500): Promise<boolean> {
  const dockerHost = process.env['DOCKER_HOST'] ?? 'unix:///var/run/docker.sock';
  let target: http.RequestOptions;
  if (dockerHost.startsWith('unix://')) {
    const socketPath = dockerHost.slice('unix://'.length);
    if (!existsSync(socketPath)) return false;
    target = { socketPath };
  } else if (dockerHost.startsWith('tcp://')) {
    const url = new URL(dockerHost.replace(/^tcp:/, 'http:'));
    target = { host: url.hostname, port: Number(url.port || 2375) };
  } else {
    return false;
  }
  return new Promise<boolean>((resolve) => {
    const request = http.get({ ...target, path: '/_ping', timeout: timeoutMs }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.once('timeout', () => request.destroy(new Error('timeout')));
    request.once('error', () => resolve(false));
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Broker ports p (from 5672 up) where p and its management port "1"+p are both free. */
async function freeBrokerPorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let port = 5672; port <= 5999 && ports.length < count; port++) {
    if ((await portFree(port)) && (await portFree(Number(`1${port}`)))) ports.push(port);
  }
  if (ports.length < count) throw new Error(`docker: found only ${ports.length} free broker port pairs`);
  return ports;
}

async function freePorts(from: number, count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let port = from; port < from + 100 && ports.length < count; port++) {
    if (await portFree(port)) ports.push(port);
  }
  if (ports.length < count) throw new Error(`docker: found only ${ports.length} free ports from ${from}`);
  return ports;
}

export interface DockerServices {
  servers: string[];
  redis: string;
  redisReplica: string;
  stop: () => Promise<void>;
}

/**
 * Starts rabbitmq:3-management brokers and a redis:7 master + replica with testcontainers. Host
 * ports are fixed (not random) because Beetle derives the management port as "1"+AMQP port;
 * with a local engine they are published on 127.0.0.1 only.
 */
export async function startDockerServices(brokers: number): Promise<DockerServices> {
  const tc = await import('testcontainers');
  const client = await tc.getContainerRuntimeClient();
  const host = client.info.containerRuntime.host;
  const local = host === 'localhost' || host === '127.0.0.1' || host === '::1';

  class Container extends tc.GenericContainer {
    withPorts(...ports: { container: number; host: number }[]): this {
      this.withExposedPorts(...ports);
      if (local) {
        // withExposedPorts() binds all interfaces; pin those bindings to loopback.
        const bindings: Record<string, { HostIp: string; HostPort: string }[]> = {};
        for (const port of ports) {
          bindings[String(port.container)] = [{ HostIp: '127.0.0.1', HostPort: String(port.host) }];
        }
        const current = this.hostConfig.PortBindings as Record<string, unknown> | undefined;
        this.hostConfig.PortBindings = { ...current, ...bindings };
      }
      return this;
    }
  }

  const brokerPorts = local ? await freeBrokerPorts(brokers) : [5672, 5673, 5674].slice(0, brokers);
  const [redisPort = 6379, replicaPort = 6380] = local ? await freePorts(6379, 2) : [];
  const started: { stop(): Promise<unknown> }[] = [];
  const network = await new tc.Network().start();
  const stop = async (): Promise<void> => {
    await Promise.allSettled(started.map((container) => container.stop()));
    await network.stop();
  };

  try {
    const redisArgs = ['redis-server', '--save', '', '--appendonly', 'no', '--repl-diskless-sync-delay', '0'];
    const master = await new Container('redis:7')
      .withNetwork(network)
      .withNetworkAliases('redis-master')
      .withCommand(redisArgs)
      .withPorts({ container: 6379, host: redisPort })
      .withWaitStrategy(tc.Wait.forLogMessage('Ready to accept connections'))
      .start();
    started.push(master);
    const starts = [
      new Container('redis:7')
        .withNetwork(network)
        .withCommand([...redisArgs, '--replicaof', 'redis-master', '6379'])
        .withPorts({ container: 6379, host: replicaPort })
        .withWaitStrategy(tc.Wait.forLogMessage('MASTER <-> REPLICA sync: Finished with success'))
        .start(),
      ...brokerPorts.map((port) =>
        new Container('rabbitmq:3-management')
          .withPorts({ container: 5672, host: port }, { container: 15672, host: Number(`1${port}`) })
          .withWaitStrategy(tc.Wait.forLogMessage(/Server startup complete/))
          .withStartupTimeout(180_000)
          .start(),
      ),
    ];
    const results = await Promise.allSettled(starts);
    for (const result of results) if (result.status === 'fulfilled') started.push(result.value);
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw new Error('docker: a service container failed to start', { cause: failed.reason });
  } catch (error) {
    await stop();
    throw error;
  }

  const at = (port: number): string => `${local ? '127.0.0.1' : host}:${port}`;
  return {
    servers: brokerPorts.map(at),
    redis: at(redisPort),
    redisReplica: at(replicaPort),
    stop,
  };
}
