import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigurationError } from '@beetle/core';
import type { CommandContext, CommandSpec } from './command.js';
import { configCommand } from './commands/config.js';
import { gcCommand } from './commands/gc.js';
import { copyKeysCommand, deleteKeysCommand, dumpExpiriesCommand } from './commands/keys.js';
import { listenCommand, traceCommand } from './commands/listen.js';
import { policyUpdatesCommand } from './commands/policy-updates.js';
import { publishCommand } from './commands/publish.js';
import { setupCommand } from './commands/setup.js';
import { statusCommand } from './commands/status.js';
import {
  configFlags,
  generalFlags,
  loadConfig,
  parseCommandLine,
  UsageError,
  type FlagSpecs,
} from './options.js';
import { defaultIo, errorMessage, oneLine, Printer, stderrLogger, type CliIo } from './output.js';

export const commands: readonly CommandSpec[] = [
  publishCommand,
  listenCommand,
  traceCommand,
  setupCommand,
  policyUpdatesCommand,
  statusCommand,
  gcCommand,
  dumpExpiriesCommand,
  deleteKeysCommand,
  copyKeysCommand,
  configCommand,
];

/** This package's version, from the nearest package.json up from this module (src/, dist/esm/ or dist/cjs/). */
function version(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 4; depth++) {
    try {
      const json = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (json.name === '@beetle/cli') return json.version ?? 'unknown';
    } catch {
      // no package.json here: look one directory up
    }
    dir = dirname(dir);
  }
  return 'unknown';
}

const findCommand = (name: string): CommandSpec | undefined =>
  commands.find((c) => c.name === name || c.aliases?.includes(name));

const flagLabel = (name: string, spec: FlagSpecs[string]): string =>
  `${spec.short === undefined ? '    ' : `-${spec.short}, `}--${name}${spec.value === undefined ? '' : ` ${spec.value}`}`;

function flagLines(specs: FlagSpecs, width: number): string[] {
  const entries = Object.entries(specs).map(
    ([name, spec]) => [flagLabel(name, spec), spec.description] as const,
  );
  return entries.map(([label, description]) =>
    label.length > width
      ? `  ${label}\n  ${' '.repeat(width)}  ${description}`
      : `  ${label.padEnd(width)}  ${description}`,
  );
}

export function commandHelp(command: CommandSpec): string {
  const all = Object.entries({ ...command.flags, ...generalFlags, ...configFlags });
  const width = Math.min(30, Math.max(...all.map(([name, spec]) => flagLabel(name, spec).length)));
  const lines = [
    `Usage: beetle ${command.name}${command.args === '' ? '' : ` ${command.args}`} [flags]`,
    '',
    command.summary,
    '',
    command.description,
    '',
    'Flags:',
    ...flagLines({ ...command.flags, ...generalFlags }, width),
    '',
    'Configuration flags (win over BEETLE_* variables, which win over the configuration file):',
    ...flagLines(configFlags, width),
  ];
  if (command.aliases !== undefined && command.aliases.length > 0) {
    lines.push('', `Aliases: ${command.aliases.join(', ')}`);
  }
  lines.push('', 'Examples:', ...command.examples.map((e) => `  ${e}`));
  return `${lines.join('\n')}\n`;
}

export function topHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'Usage: beetle <command> [arguments] [flags]',
    '',
    'The Beetle command: publish, consume and trace Beetle messages, set up queues and policies, and',
    'maintain the Redis deduplication store (compatible with Ruby Beetle 6.x and its Go command).',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `beetle <command> --help` for its arguments and flags. Configuration comes from a Beetle YAML/JSON',
    'file (--config-file or BEETLE_CONFIG_FILE), BEETLE_<OPTION> variables and flags, flags winning.',
    'Exit status: 0 ok, 1 runtime failure (broker or Redis unreachable, publish failed), 2 usage or',
    'configuration error.',
    '',
  ].join('\n');
}

/**
 * The word after `beetle:` for an error's reason, where it is not the reason itself: Redis failures of
 * either kind print as `redis`, as they always did (scripts and alerts match the line).
 */
const REASON_LABELS: Readonly<Record<string, string>> = {
  'redis-unavailable': 'redis',
  'redis-reply': 'redis',
};

function reasonOf(error: unknown): string {
  const reason = (error as { reason?: unknown } | null)?.reason;
  if (typeof reason === 'string') return REASON_LABELS[reason] ?? reason;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'error';
}

/** The message, with the cause's appended when it adds something (e.g. why no broker took a message). */
function describeError(error: unknown): string {
  let text = errorMessage(error);
  const cause = error instanceof Error ? error.cause : undefined;
  if (cause instanceof Error && !text.includes(cause.message)) text += ` (${cause.message})`;
  if (error instanceof AggregateError && error.errors.length > 0 && !(cause instanceof Error)) {
    const first = error.errors[0] as unknown;
    text += ` (${errorMessage(first)})`;
  }
  return oneLine(text);
}

/** Aborts on SIGINT/SIGTERM of this process; a second signal exits at once. Returns a disposer. */
function processSignals(controller: AbortController): () => void {
  const onSignal = (signal: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(signal === 'SIGINT' ? 130 : 143);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/**
 * Runs the `beetle` command line `argv` (without the node and script paths) and resolves with the exit status:
 * 0 ok, 1 runtime failure, 2 usage or configuration error. Errors are one line on stderr
 * (`beetle: <reason>: <message>`), with the stack only under `--verbose`. `io` replaces the process' streams,
 * environment and signals (tests).
 */
export async function main(argv: readonly string[], io: Partial<CliIo> = {}): Promise<number> {
  const fullIo: CliIo = { ...defaultIo(), ...io };
  const print = new Printer(fullIo);
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  try {
    const [first, ...rest] = argv;
    if (first === undefined) {
      print.err(topHelp().trimEnd());
      return 2;
    }
    if (first === '--help' || first === '-h' || first === 'help') {
      const topic = first === 'help' ? rest[0] : undefined;
      if (topic === undefined) {
        print.out(topHelp().trimEnd());
        return 0;
      }
      const command = findCommand(topic);
      if (command === undefined) throw new UsageError(`unknown command \`${topic}\` (see beetle --help)`);
      print.out(commandHelp(command).trimEnd());
      return 0;
    }
    if (first === '--version' || first === '-V') {
      print.out(version());
      return 0;
    }
    if (first.startsWith('-')) {
      throw new UsageError(`expected a command before ${first} (see beetle --help)`);
    }
    const command = findCommand(first);
    if (command === undefined) throw new UsageError(`unknown command \`${first}\` (see beetle --help)`);

    const specs = { ...command.flags, ...generalFlags, ...configFlags };
    const { flags, positionals } = parseCommandLine(rest, specs, command.name);
    if (flags['help'] === true) {
      print.out(commandHelp(command).trimEnd());
      return 0;
    }
    const { min, max } = command.positionals;
    if (positionals.length < min) {
      throw new UsageError(`beetle ${command.name} needs ${command.args} (see --help)`);
    }
    if (positionals.length > max) {
      const extra = positionals.slice(max).join(' ');
      throw new UsageError(
        `unexpected argument${positionals.length - max > 1 ? 's' : ''} for beetle ${command.name}: ${extra}`,
      );
    }
    const config = await loadConfig(
      flags,
      fullIo.env,
      verbose ? (line) => print.err(`beetle: ${line}`) : undefined,
    );

    const controller = new AbortController();
    let dispose = (): void => undefined;
    if (fullIo.signal !== undefined) {
      const external = fullIo.signal;
      if (external.aborted) controller.abort();
      else external.addEventListener('abort', () => controller.abort(), { once: true });
    } else {
      dispose = processSignals(controller);
    }
    const logger = stderrLogger(fullIo, verbose ? 'debug' : 'silent');
    const ctx: CommandContext = {
      io: fullIo,
      print,
      flags,
      positionals,
      config,
      logger,
      startLogging: () => {
        if (!verbose) logger.level = command.logLevel ?? 'silent';
      },
      verbose,
      signal: controller.signal,
    };
    try {
      return await command.run(ctx);
    } finally {
      dispose();
    }
  } catch (error) {
    print.err(`beetle: ${reasonOf(error)}: ${describeError(error)}`);
    if (verbose && error instanceof Error && error.stack !== undefined) print.err(error.stack);
    return error instanceof UsageError || error instanceof ConfigurationError ? 2 : 1;
  }
}
