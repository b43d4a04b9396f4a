export { commandHelp, commands, main, topHelp } from './main.js';
export type { CommandContext, CommandSpec } from './command.js';
export type { CliIo } from './output.js';
