import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { manifestPath } from './manifest.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const manifest = (dir: string): { dependencies?: Record<string, string> } =>
  JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>;
  };

/** The version of `name` that `fromPackage` gets at run time. */
const installedVersion = (name: string, fromPackage: string): string =>
  (JSON.parse(readFileSync(manifestPath(name, join(root, fromPackage)), 'utf8')) as { version: string })
    .version;

describe.each([
  ['amqplib', ['packages/broker-amqp']],
  ['ioredis', ['packages/dedup-redis', 'packages/cli']],
] as const)('%s', (driver, users) => {
  const row = new RegExp(`^\\| ${driver} +\\| \`([^\`]+)\` [^|]*\\| +([^ |]+) +\\|$`, 'm').exec(readme);

  it('is declared with the range the README states, by every package that uses it', () => {
    expect(row, `README "Requirements" row for ${driver}`).not.toBeNull();
    for (const user of users) expect(manifest(user).dependencies?.[driver]).toBe(row?.[1]);
  });

  it('is tested at the version the README names, which satisfies that range', () => {
    const range = row?.[1] ?? '';
    for (const user of users) {
      const version = installedVersion(driver, user);
      expect(version).toBe(row?.[2]);
      // Caret ranges: the same major, and at least the stated version.
      const [wanted = [], got = []] = [range.replace('^', ''), version].map((v) => v.split('.').map(Number));
      expect(got[0]).toBe(wanted[0]);
      const order = got.map((part, i) => Math.sign(part - (wanted[i] ?? 0))).find((sign) => sign !== 0) ?? 0;
      expect(order, `${version} is at least ${range}`).toBeGreaterThanOrEqual(0);
    }
  });
});
