/**
 * The packages as users get them: each one packed with `pnpm pack` (run `pnpm build` first), the tarballs
 * installed with npm into a project outside the workspace, then every entry point loaded with `require()` and
 * with `import`, on this machine's Node, and a redundant message sent and handled through the installed
 * CommonJS build against the real brokers and Redis.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveServices, type TestServices } from '@beetle/test-services';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

interface Manifest {
  name: string;
  version: string;
  exports: Record<string, string | { import?: unknown; require?: unknown }>;
  bin?: Record<string, string>;
}

const packages = readdirSync(join(root, 'packages'))
  .sort()
  .map((dir) => ({
    dir: join(root, 'packages', dir),
    manifest: JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8')) as Manifest,
  }));

/** Every entry point (`@beetle/core`, `@beetle/core/testing`, …) and whether `require` may load it. */
const entryPoints = packages.flatMap(({ manifest }) =>
  Object.entries(manifest.exports)
    .filter(([subpath]) => subpath !== './package.json')
    .map(([subpath, target]) => ({
      specifier: subpath === '.' ? manifest.name : `${manifest.name}/${subpath.slice(2)}`,
      requirable: typeof target === 'object' && target.require !== undefined,
    })),
);

let project = '';
let tarballs = '';

/** Runs a script in the consumer project; returns its stdout. */
function node(args: readonly string[], env: NodeJS.ProcessEnv = {}): string {
  return execFileSync(process.execPath, args, {
    cwd: project,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60_000,
  });
}

const namesVia = (how: 'require' | 'import', specifier: string): string[] => {
  const load =
    how === 'require'
      ? `const m = require(${JSON.stringify(specifier)});`
      : `const m = await import(${JSON.stringify(specifier)});`;
  const script = `${load} process.stdout.write(JSON.stringify(Object.keys(m).filter((k) => k !== 'default').sort()));`;
  const args = how === 'require' ? ['-e', script] : ['--input-type=module', '-e', script];
  return JSON.parse(node(args)) as string[];
};

beforeAll(() => {
  tarballs = mkdtempSync(join(tmpdir(), 'beetle-tarballs-'));
  project = mkdtempSync(join(tmpdir(), 'beetle-consumer-'));
  const dependencies: Record<string, string> = {};
  for (const { dir, manifest } of packages) {
    execFileSync('pnpm', ['pack', '--pack-destination', tarballs], { cwd: dir, stdio: 'pipe' });
    const file = `${manifest.name.replace('@', '').replace('/', '-')}-${manifest.version}.tgz`;
    dependencies[manifest.name] = `file:${join(tarballs, file)}`;
  }
  writeFileSync(
    join(project, 'package.json'),
    JSON.stringify(
      {
        name: 'beetle-consumer',
        private: true,
        // With the optional peers of @beetle/telemetry's entry points, as their users install them.
        dependencies: { ...dependencies, '@opentelemetry/api': '1.9.0', 'prom-client': '15.1.3' },
        overrides: dependencies,
      },
      null,
      2,
    ),
  );
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd: project,
    stdio: 'pipe',
    timeout: 240_000,
  });
  // vitest, the optional peer of @beetle/core/testing, as the workspace has it (no second download).
  symlinkSync(join(root, 'node_modules', 'vitest'), join(project, 'node_modules', 'vitest'), 'dir');
}, 300_000);

afterAll(() => {
  for (const dir of [project, tarballs]) if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('packed packages installed outside the workspace', () => {
  it('installs every package from its tarball, outside the workspace', () => {
    expect(project.startsWith(root)).toBe(false);
    for (const { manifest } of packages) {
      const installed = JSON.parse(
        readFileSync(join(project, 'node_modules', manifest.name, 'package.json'), 'utf8'),
      ) as Manifest;
      expect(installed.version).toBe(manifest.version);
    }
  });

  it.each(entryPoints.map((e) => [e.specifier, e] as const))(
    '%s: import and require give the same exports',
    (_specifier, { specifier, requirable }) => {
      const viaImport = namesVia('import', specifier);
      expect(viaImport.length).toBeGreaterThan(0);
      if (requirable) {
        expect(namesVia('require', specifier)).toEqual(viaImport);
      } else {
        // ESM only on purpose (vitest cannot be required): Node says so plainly.
        expect(() => namesVia('require', specifier)).toThrow(/ERR_PACKAGE_PATH_NOT_EXPORTED/);
      }
    },
  );

  it('recognises errors across the CommonJS and the ES module copy loaded in one process', () => {
    writeFileSync(
      join(project, 'dual.mjs'),
      `import { createRequire } from 'node:module';
const cjs = createRequire(import.meta.url)('@beetle/core');
const esm = await import('@beetle/core');
const error = new cjs.ConfigurationError('from the CommonJS copy');
process.stdout.write(JSON.stringify({
  twoCopies: cjs.BeetleError !== esm.BeetleError,
  sameClass: error instanceof esm.ConfigurationError,
  base: error instanceof esm.BeetleError && esm.isBeetleError(error),
  otherClass: error instanceof esm.UnknownQueueError,
  plainError: new Error('x') instanceof esm.BeetleError,
}));`,
    );
    expect(JSON.parse(node(['dual.mjs']))).toEqual({
      twoCopies: true,
      sameClass: true,
      base: true,
      otherClass: false,
      plainError: false,
    });
  });

  it('runs the installed beetle command', () => {
    const cli = packages.find((p) => p.manifest.name === '@beetle/cli')!;
    expect(node([join(project, 'node_modules', '.bin', 'beetle'), '--version']).trim()).toContain(
      cli.manifest.version,
    );
  });

  describe('against the real brokers and Redis', () => {
    let services: TestServices;
    beforeAll(async () => {
      services = await resolveServices();
    });

    it('publishes a redundant message and handles it once through the CommonJS build', async () => {
      const queue = `beetle-pack-${process.pid}-${Date.now()}`;
      writeFileSync(
        join(project, 'roundtrip.cjs'),
        `const { Client, RedisDedupStore } = require('@beetle/client');
const { createConfig } = require('@beetle/core');
(async () => {
  const config = createConfig({ servers: process.env.SERVERS, redisServer: process.env.REDIS });
  const store = RedisDedupStore.fromConfig(config);
  const queue = process.env.QUEUE;
  const client = new Client({ config, store }).queue(queue).message(queue, { redundant: true });
  let runs = 0;
  let copies = 0;
  client.handler(queue, () => { runs++; });
  client.subscriber.on('processed', () => { copies++; });
  await client.listen();
  const brokers = await client.publish(queue, { hello: 'cjs' });
  const until = Date.now() + 10000;
  while (copies < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  await client.stop();
  await store.close();
  process.stdout.write(JSON.stringify({ brokers, copies, runs }));
})().catch((error) => { console.error(error); process.exit(1); });`,
      );
      const result = JSON.parse(
        node(['roundtrip.cjs'], {
          SERVERS: services.servers.slice(0, 2).join(','),
          REDIS: services.redis,
          QUEUE: queue,
        }),
      ) as unknown;
      expect(result).toEqual({ brokers: 2, copies: 2, runs: 1 });
      await Promise.all(
        services.servers.slice(0, 2).flatMap((server) =>
          [`queues/%2F/${queue}`, `exchanges/%2F/${queue}`].map((path) =>
            fetch(`http://127.0.0.1:${services.managementPort(server)}/api/${path}`, {
              method: 'DELETE',
              headers: { authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
            }).then((response) => expect(response.status).toBe(204)),
          ),
        ),
      );
    });
  });
});
