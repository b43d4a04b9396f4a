#!/usr/bin/env node
import { main } from './main.js';

const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything is closed by now; should a library still hold a handle, do not hang.
setTimeout(() => process.exit(code), 2000).unref();
