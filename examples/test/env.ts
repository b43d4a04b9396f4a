/**
 * The examples read `BEETLE_SERVERS` / `BEETLE_REDIS_SERVER`; the test run's global setup resolves the
 * services into `BEETLE_TEST_SERVERS` / `BEETLE_TEST_REDIS`. This maps one onto the other.
 */
import type { ExampleOptions } from '../src/support.js';

const isCI = /^(1|true|yes)$/i.test(process.env.CI ?? '');

export function exampleEnv(): NodeJS.ProcessEnv {
  const servers = process.env.BEETLE_TEST_SERVERS;
  const redis = process.env.BEETLE_TEST_REDIS;
  if (isCI && (!servers || !redis)) {
    throw new Error('BEETLE_TEST_SERVERS / BEETLE_TEST_REDIS are not set: the test services are missing');
  }
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (servers) env.BEETLE_SERVERS = servers.split(',').slice(0, 2).join(',');
  if (redis) env.BEETLE_REDIS_SERVER = redis;
  return env;
}

/** Options for an example run in a test: the test services, output collected instead of printed. */
export function testOptions(lines: string[] = []): ExampleOptions & { readonly lines: string[] } {
  return { env: exampleEnv(), print: (line) => lines.push(line), logLevel: 'warn', lines };
}
