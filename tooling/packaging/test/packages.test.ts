import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { manifestPath } from './manifest.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const packagesDir = join(root, 'packages');

interface PackageJson {
  name: string;
  private?: boolean;
  type?: string;
  version: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  exports?: Record<string, Record<string, { types: string; default: string }> | string>;
  files?: string[];
  license?: string;
  repository?: { type: string; url: string; directory?: string };
  keywords?: string[];
  engines?: Record<string, string>;
  sideEffects?: boolean | string[];
  main?: string;
  types?: string;
}

const readJson = (path: string): PackageJson => JSON.parse(readFileSync(path, 'utf8')) as PackageJson;
const workspacePackages = readdirSync(packagesDir).map((dir) => ({
  dir: join(packagesDir, dir),
  json: readJson(join(packagesDir, dir, 'package.json')),
}));

/** Every package a consumer installs with `name`, following installed manifests like npm would. */
function dependencyClosure(name: string): Set<string> {
  const seen = new Set<string>();
  const visit = (pkgName: string, fromDir: string): void => {
    if (seen.has(pkgName)) return;
    seen.add(pkgName);
    const manifest = manifestPath(pkgName, fromDir);
    const json = readJson(manifest);
    for (const dep of Object.keys({ ...json.dependencies, ...json.optionalDependencies })) {
      visit(dep, dirname(manifest));
    }
  };
  visit(name, root);
  seen.delete(name);
  return seen;
}

describe('package boundaries', () => {
  it('keeps Redis and the subscriber out of @beetle/publisher', () => {
    const closure = dependencyClosure('@beetle/publisher');
    expect(closure.has('@beetle/core')).toBe(true);
    expect(closure.has('amqplib')).toBe(true);
    for (const forbidden of ['ioredis', '@beetle/subscriber', '@beetle/dedup-redis', '@beetle/client']) {
      expect(closure.has(forbidden), `${forbidden} in the publisher's closure`).toBe(false);
    }
  });

  it('keeps @beetle/core free of network libraries', () => {
    const closure = dependencyClosure('@beetle/core');
    for (const forbidden of ['amqplib', 'ioredis']) expect(closure.has(forbidden)).toBe(false);
  });
});

const rootJson = readJson(join(root, 'package.json'));

describe.each(workspacePackages.map((p) => [p.json.name, p] as const))('%s', (_name, pkg) => {
  it('is a publishable package with one fixed version', () => {
    expect(pkg.json.private).not.toBe(true);
    expect(pkg.json.type).toBe('module');
    expect(pkg.json.version).toBe(workspacePackages[0]?.json.version);
    expect(pkg.json.files).toEqual(expect.arrayContaining(['dist', 'README.md', 'LICENSE']));
    expect(existsSync(join(pkg.dir, 'src', 'index.ts'))).toBe(true);
  });

  it('says what it is and where it comes from: license, repository, keywords, engines, side effects', () => {
    expect(pkg.json.license).toBe('MIT');
    expect(existsSync(join(pkg.dir, 'LICENSE'))).toBe(true);
    expect(pkg.json.repository).toEqual({
      type: 'git',
      url: rootJson.repository?.url,
      directory: `packages/${basename(pkg.dir)}`,
    });
    expect(pkg.json.keywords).toEqual(expect.arrayContaining(['beetle', 'rabbitmq', 'redis']));
    expect(pkg.json.engines?.['node']).toBe(rootJson.engines?.['node']);
    // Libraries have no import side effects; the CLI's only one is its executable.
    expect(pkg.json.sideEffects).toEqual(pkg.json.name === '@beetle/cli' ? ['./dist/esm/bin.js'] : false);
  });

  it('has built ESM and CommonJS entry points with declarations for every export (run `pnpm build` first)', () => {
    expect(existsSync(join(pkg.dir, pkg.json.main ?? 'missing'))).toBe(true);
    expect(existsSync(join(pkg.dir, pkg.json.types ?? 'missing'))).toBe(true);
    expect(existsSync(join(pkg.dir, 'dist/cjs/package.json'))).toBe(true);
    for (const [subpath, target] of Object.entries(pkg.json.exports ?? {})) {
      if (typeof target === 'string') continue;
      expect(Object.keys(target), subpath).toEqual(
        pkg.json.name === '@beetle/core' && subpath === './testing' ? ['import'] : ['import', 'require'],
      );
      for (const condition of Object.values(target)) {
        expect(existsSync(join(pkg.dir, condition.default)), `${subpath} -> ${condition.default}`).toBe(true);
        expect(existsSync(join(pkg.dir, condition.types)), `${subpath} -> ${condition.types}`).toBe(true);
      }
    }
  });
});
