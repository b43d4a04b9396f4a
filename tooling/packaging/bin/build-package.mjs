#!/usr/bin/env node
// Builds the package in the current directory for both module systems:
//   dist/esm  tsc's output (ESM, declarations, source maps): what `import` loads;
//   dist/cjs  the same modules as CommonJS (esbuild, one file per module, no bundling) with the same
//             declarations, marked `"type": "commonjs"`: what `require` loads (NestJS, Jest, ts-node).
// A real CommonJS build rather than Node's require(esm): Jest and older loaders cannot require ESM, and
// TypeScript's node16 mode refuses it. Errors stay one class across both builds (see core's errors.ts).
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { build } from 'esbuild';

const cwd = process.cwd();
const require = createRequire(join(cwd, 'package.json'));
const pkg = JSON.parse(readFileSync(join(cwd, 'package.json'), 'utf8'));
const esm = join(cwd, 'dist', 'esm');
const cjs = join(cwd, 'dist', 'cjs');

rmSync(join(cwd, 'dist'), { recursive: true, force: true });

const tsc = spawnSync(
  process.execPath,
  [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
  {
    cwd,
    stdio: 'inherit',
  },
);
if (tsc.status !== 0) process.exit(tsc.status ?? 1);

/** Every file under `dir`, as paths relative to it. */
const filesOf = (dir) =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)));

// Executables stay ESM only (a bin may use top-level await; nobody requires it).
const bins = new Set(
  Object.values(typeof pkg.bin === 'string' ? { bin: pkg.bin } : (pkg.bin ?? {})).map((bin) =>
    relative(esm, join(cwd, bin)).replace(/\.js$/, '.ts'),
  ),
);
// Entry points exported for `import` only (core's vitest contract suite: vitest cannot be required) are left
// out of the CommonJS build, with the files under their directory.
const esmOnlyDirs = Object.values(pkg.exports ?? {})
  .filter((target) => typeof target === 'object' && target.require === undefined)
  .map((target) => dirname(relative(esm, join(cwd, target.import.default))))
  .filter((dir) => dir !== '.');
const sources = filesOf(join(cwd, 'src')).filter(
  (file) =>
    file.endsWith('.ts') &&
    !file.endsWith('.d.ts') &&
    !bins.has(file) &&
    !esmOnlyDirs.some((dir) => file.startsWith(`${dir}/`)),
);
const usesImportMeta = (file) => readFileSync(join(cwd, 'src', file), 'utf8').includes('import.meta');

// `import.meta.url` has no CommonJS equivalent built in: the modules that use it get one from __filename.
const options = {
  outbase: join(cwd, 'src'),
  outdir: cjs,
  format: 'cjs',
  platform: 'node',
  target: 'node20.19',
  sourcemap: true,
  logLevel: 'warning',
};
await build({
  ...options,
  entryPoints: sources.filter((f) => !usesImportMeta(f)).map((f) => join(cwd, 'src', f)),
});
const withMeta = sources.filter(usesImportMeta).map((f) => join(cwd, 'src', f));
if (withMeta.length > 0) {
  await build({
    ...options,
    entryPoints: withMeta,
    define: { 'import.meta.url': '__beetleModuleUrl' },
    banner: { js: 'var __beetleModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  });
}

// The declarations are the same text; under dist/cjs they describe CommonJS modules. Their maps stay valid:
// dist/cjs is as deep as dist/esm.
for (const file of filesOf(esm)) {
  if (
    esmOnlyDirs.some((dir) => file.startsWith(`${dir}/`)) ||
    bins.has(file.replace(/\.d\.ts(\.map)?$/, '.ts'))
  )
    continue;
  if (file.endsWith('.d.ts') || file.endsWith('.d.ts.map')) {
    mkdirSync(dirname(join(cjs, file)), { recursive: true });
    cpSync(join(esm, file), join(cjs, file));
  }
}
writeFileSync(join(cjs, 'package.json'), `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);

// The bin keeps its shebang in both builds and must be executable where npm links it.
for (const bin of Object.values(typeof pkg.bin === 'string' ? { bin: pkg.bin } : (pkg.bin ?? {}))) {
  chmodSync(join(cwd, bin), 0o755);
}
