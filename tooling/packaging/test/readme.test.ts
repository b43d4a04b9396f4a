import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { configOptions } from '@beetle/core';
import { renderConfigReference } from '../src/config-reference.js';

const readme = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8');

describe('README', () => {
  it('documents every configuration option as the option table defines it (run `pnpm docs:config`)', () => {
    expect(readme).toContain(renderConfigReference());
    for (const option of configOptions) expect(readme).toContain(`\`${option.name}\``);
  });

  it('keeps exactly the two set-up commands: the demo and the tests', () => {
    const setup = /## Set up\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? '';
    const commands = [...setup.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]?.trim());
    expect(commands).toEqual(['npm install -g pnpm@10 && pnpm install && pnpm demo', 'pnpm test']);
  });
});
