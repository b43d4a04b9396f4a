import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const packagesDir = join(root, 'packages');

interface PackageJson {
  name: string;
  private?: boolean;
  type?: string;
  version: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  exports?: Record<string, { types: string; import: string } | string>;
  files?: string[];
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
    const manifest = createRequire(join(fromDir, 'noop.js')).resolve(`${pkgName}/package.json`);
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

describe.each(workspacePackages.map((p) => [p.json.name, p] as const))('%s', (_name, pkg) => {
  it('is a publishable ESM package with one fixed version', () => {
    expect(pkg.json.private).not.toBe(true);
    expect(pkg.json.type).toBe('module');
    expect(pkg.json.version).toBe(workspacePackages[0]?.json.version);
    expect(pkg.json.files).toContain('dist');
    expect(existsSync(join(pkg.dir, 'src', 'index.ts'))).toBe(true);
  });

  it('has built ESM entry points and type declarations for every export (run `pnpm build` first)', () => {
    for (const [subpath, target] of Object.entries(pkg.json.exports ?? {})) {
      if (typeof target === 'string') continue;
      expect(existsSync(join(pkg.dir, target.import)), `${subpath} -> ${target.import}`).toBe(true);
      expect(existsSync(join(pkg.dir, target.types)), `${subpath} -> ${target.types}`).toBe(true);
    }
  });
});
