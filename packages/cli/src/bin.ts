#!/usr/bin/env node
import { main } from './main.js';

// `beetle dump-expiries | head`: a closed pipe ends the command quietly.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  process.exit(error.code === 'EPIPE' ? 0 : 1);
});
const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything is closed by now; should a library still hold a handle, do not hang.
setTimeout(() => process.exit(code), 2000).unref();
