import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/*
 * Conventions of the sources that review alone does not keep: errors thrown to users are `BeetleError`s with a
 * `reason`, each package's index is an explicit list, and a file over ~400 lines says why at its top.
 */

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Every `.ts` file under `dir` (relative to the repository root), sorted. */
function sourcesUnder(dir: string): string[] {
  const files: string[] = [];
  const walk = (path: string): void => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) {
        if (entry.name !== 'node_modules' && entry.name !== 'dist') walk(full);
      } else if (/\.(ts|mts|mjs)$/.test(entry.name) && !entry.name.endsWith('.d.ts')) {
        files.push(relative(root, full));
      }
    }
  };
  walk(join(root, dir));
  return files.sort();
}

const packageSources = readdirSync(join(root, 'packages')).flatMap((name) =>
  sourcesUnder(`packages/${name}/src`),
);

/** A built-in error made (`new Error(`, `TypeError(` …) or subclassed, outside comments. */
const BUILT_IN_ERROR =
  /(?<![\w.$])(?:(?:new\s+)?(?:Error|TypeError|RangeError|SyntaxError|ReferenceError|EvalError|URIError|AggregateError)\s*\(|extends\s+(?:Error|TypeError|RangeError)\b)/;

/** The lines of `text` that make or subclass a built-in error: `[line number, trimmed line]`. */
function builtInErrors(text: string): [number, string][] {
  const hits: [number, string][] = [];
  for (const [i, line] of text.split('\n').entries()) {
    const code = line.trim();
    if (code.startsWith('//') || code.startsWith('*') || code.startsWith('/*')) continue;
    if (BUILT_IN_ERROR.test(code.replace(/\/\/.*$/, ''))) hits.push([i + 1, code]);
  }
  return hits;
}

/** The places a built-in error is right, each with why. `text` must occur in the line. */
const ALLOWED_BUILT_IN_ERRORS: readonly { file: string; text: string; reason: string }[] = [
  {
    file: 'packages/core/src/errors.ts',
    text: 'export class BeetleError extends Error',
    reason: 'the base of the error model',
  },
  {
    file: 'packages/core/src/errors.ts',
    text: 'export class InvalidArgumentError extends TypeError',
    reason: 'a BeetleError by lineage that stays a TypeError (the store contract asserts TypeError)',
  },
  {
    file: 'packages/core/src/kit/timing.ts',
    text: 'new Error(String(error))',
    reason: "toError wraps a non-Error value other code threw: the value is the thrower's, not Beetle's",
  },
  {
    file: 'packages/core/src/publish-validation.ts',
    text: 'class HeaderProblem extends Error',
    reason: 'internal signal up the header nesting, always turned into InvalidPublishError before it leaves',
  },
  {
    file: 'packages/core/src/testing/contract/fixture.ts',
    text: "new Error('store not created')",
    reason: 'the contract suite used outside a test: vitest reports it as a failed test',
  },
  {
    file: 'packages/core/src/testing/contract/store-clock.ts',
    text: "new Error('a second claim must not be a first sighting')",
    reason: 'an assertion of the contract suite: vitest reports it as a failed test',
  },
  {
    file: 'packages/cli/src/status/page.ts',
    text: "throw new Error('status.json answered '",
    reason: "the status page's script, run by the operator's browser (caught there and shown on the page)",
  },
];

describe('errors thrown to users are BeetleErrors with a reason', () => {
  it('finds a plain built-in error in a line of code (and not in comments or other names)', () => {
    expect(
      builtInErrors("throw new Error('x');\nreject(TypeError('y'));\nclass A extends RangeError {}"),
    ).toEqual([
      [1, "throw new Error('x');"],
      [2, "reject(TypeError('y'));"],
      [3, 'class A extends RangeError {}'],
    ]);
    expect(
      builtInErrors("// new Error('x')\n * new Error(\nnew BrokerError('x');\ntoError(e); isErrorReply(e)"),
    ).toEqual([]);
  });

  it('has no plain Error, TypeError or RangeError in packages/*/src outside the allow-list', () => {
    const found: string[] = [];
    const used = new Set<number>();
    for (const file of packageSources) {
      for (const [line, code] of builtInErrors(readFileSync(join(root, file), 'utf8'))) {
        const allowed = ALLOWED_BUILT_IN_ERRORS.findIndex((a) => a.file === file && code.includes(a.text));
        if (allowed === -1) found.push(`${file}:${line}: ${code}`);
        else used.add(allowed);
      }
    }
    expect(
      found,
      'throw a BeetleError subclass with a reason, or add the line to the allow-list with why',
    ).toEqual([]);
    const stale = ALLOWED_BUILT_IN_ERRORS.filter((_, i) => !used.has(i)).map((a) => `${a.file}: ${a.text}`);
    expect(stale, 'allow-list entries that match nothing any more').toEqual([]);
  });
});

describe('curated public API', () => {
  it('has no `export *` in packages/*/src: every export is named', () => {
    const found = packageSources.filter((file) =>
      /^\s*export\s+(?:type\s+)?\*/m.test(readFileSync(join(root, file), 'utf8')),
    );
    expect(found).toEqual([]);
  });
});

describe('file size', () => {
  const sources = [
    ...packageSources,
    ...sourcesUnder('chaos/src'),
    ...sourcesUnder('bench/src'),
    ...sourcesUnder('tooling'),
  ];

  it('looks at the sources of every package, chaos, bench and tooling', () => {
    expect(sources).toEqual(expect.arrayContaining(['packages/core/src/index.ts', 'chaos/src/harness.ts']));
    expect(sources.filter((file) => file.startsWith('tooling/')).length).toBeGreaterThan(5);
  });

  it('states at its top why a file is over 400 lines', () => {
    const unexplained = sources.filter((file) => {
      const text = readFileSync(join(root, file), 'utf8');
      const lines = text.split('\n');
      const count = lines.length - (text.endsWith('\n') ? 1 : 0); // as `wc -l` counts
      return count > 400 && !/\b400 lines\b/.test(lines.slice(0, 12).join('\n'));
    });
    expect(unexplained, 'split the file, or say at its top why it is over 400 lines').toEqual([]);
  });
});
