/**
 * Vitest globalSetup: resolve (and if needed start) the shared test services once, then publish
 * them through the environment so every test worker sees the same ones without provisioning.
 * Set BEETLE_THIRD_BROKER=1 to require a third broker.
 */
import { releaseServices, resolveServices } from './index.js';

export default async function setup(): Promise<() => Promise<void>> {
  const brokers = process.env.BEETLE_THIRD_BROKER === '1' ? 3 : 2;
  const services = await resolveServices({ brokers });
  process.env.BEETLE_TEST_SERVERS = services.servers.join(',');
  process.env.BEETLE_TEST_REDIS = services.redis;
  if (services.redisReplica) process.env.BEETLE_TEST_REDIS_REPLICA = services.redisReplica;
  else delete process.env.BEETLE_TEST_REDIS_REPLICA;
  process.stderr.write(
    `[test-services] brokers ${services.servers.join(', ')}; redis ${services.redis}` +
      (services.redisReplica ? `, replica ${services.redisReplica}` : '') +
      '\n',
  );
  return releaseServices;
}
