// Regenerates the configuration reference in README.md from the option table: `pnpm docs:config`.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { updateConfigReference } from './config-reference.js';

const readme = fileURLToPath(new URL('../../../README.md', import.meta.url));
writeFileSync(readme, updateConfigReference(readFileSync(readme, 'utf8')));
console.log(`updated ${readme}`);
