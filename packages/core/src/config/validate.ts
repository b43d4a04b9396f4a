import { ConfigurationError } from '../errors.js';
import { configOptions, type ConfigOptionInfo, type ServerConnectionOptions } from './options.js';
import { parseServerAddress, parseServerList } from './servers.js';

/** Who an error is about: `label` starts the message ("option `redisDb`"), `key` becomes `error.key`. */
export interface Subject {
  readonly key: string;
  readonly label: string;
}

export const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' &&
  value !== null &&
  !Array.isArray(value) &&
  [Object.prototype, null].includes(Object.getPrototypeOf(value) as object | null);

/** `string "x"`, `number -1`, `array`: the type and, for scalars, the value. */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'string':
      return `string ${JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)}`;
    case 'number':
    case 'boolean':
    case 'bigint':
      return `${typeof value} ${String(value)}`;
    case 'object':
      return 'an object';
    default:
      return typeof value;
  }
}

const fail = (subject: Subject, problem: string, cause?: unknown): never => {
  throw new ConfigurationError(`${subject.label} ${problem}`, {
    key: subject.key,
    ...(cause === undefined ? {} : { cause }),
  });
};

const mustBe = (subject: Subject, expected: string, value: unknown): never =>
  fail(subject, `must be ${expected}, got ${describeValue(value)}`);

function checkNumber(option: ConfigOptionInfo, value: unknown, subject: Subject): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) return mustBe(subject, option.expected, value);
  const { min, max, positive } = option;
  if (
    (option.type === 'integer' && !Number.isSafeInteger(value)) ||
    (positive === true && value <= 0) ||
    (min !== undefined && value < min) ||
    (max !== undefined && value > max)
  ) {
    return mustBe(subject, option.expected, value);
  }
  return value;
}

function checkServerList(option: ConfigOptionInfo, value: unknown, subject: Subject): string[] {
  const isList = Array.isArray(value) && value.every((s) => typeof s === 'string');
  if (typeof value !== 'string' && !isList) return mustBe(subject, option.expected, value);
  const servers = parseServerList(value);
  for (const server of servers) {
    try {
      parseServerAddress(server);
    } catch (error) {
      fail(subject, `contains an ${(error as Error).message}`, error);
    }
  }
  return servers;
}

const isNonEmptyString = (v: unknown): boolean => typeof v === 'string' && v !== '';
const pemOrPath: readonly [string, (v: unknown) => boolean] = ['PEM text or a file path', isNonEmptyString];
const pemsOrPaths: readonly [string, (v: unknown) => boolean] = [
  'PEM text, a file path or a non-empty array of them',
  (v) => isNonEmptyString(v) || (Array.isArray(v) && v.length > 0 && v.every(isNonEmptyString)),
];

/** TLS settings of a server (ours, and Bunny's names that Ruby configurations use), read only with `tls`. */
const tlsOptionChecks = new Map<string, readonly [expected: string, ok: (v: unknown) => boolean]>([
  ['ca', pemsOrPaths],
  ['tls_ca_certificates', pemsOrPaths],
  ['cert', pemOrPath],
  ['tls_cert', pemOrPath],
  ['key', pemOrPath],
  ['tls_key', pemOrPath],
  ['pfx', ['a file path', isNonEmptyString]],
  ['passphrase', ['a string', (v) => typeof v === 'string']],
  ['servername', ['a non-empty string', isNonEmptyString]],
  ['rejectUnauthorized', ['a boolean', (v) => typeof v === 'boolean']],
  ['verify_peer', ['a boolean', (v) => typeof v === 'boolean']],
]);
/** Our TLS names and the Bunny names read when ours are unset: setting both is ambiguous. */
export const bunnyTlsNames: ReadonlyMap<string, string> = new Map([
  ['ca', 'tls_ca_certificates'],
  ['cert', 'tls_cert'],
  ['key', 'tls_key'],
  ['rejectUnauthorized', 'verify_peer'],
]);

/** The connection options Beetle reads, with their check; other keys are passed through to the broker layer. */
const connectionOptionChecks = new Map<string, readonly [expected: string, ok: (v: unknown) => boolean]>([
  ...tlsOptionChecks,
  ['user', ['a string', (v) => typeof v === 'string']],
  ['password', ['a string', (v) => typeof v === 'string']],
  ['vhost', ['a non-empty string', (v) => typeof v === 'string' && v !== '']],
  ['tls', ['a boolean', (v) => typeof v === 'boolean']],
  ['host', ['a non-empty string', (v) => typeof v === 'string' && v !== '']],
  [
    'port',
    [
      'an integer between 1 and 65535',
      (v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535,
    ],
  ],
]);
const rubyAliases = new Map([
  ['pass', 'password'],
  ['ssl', 'tls'],
]);

/** Normalizes Ruby's `pass`/`ssl` to `password`/`tls`, checks the keys Beetle reads, keeps the rest. */
function checkConnectionOptions(
  option: ConfigOptionInfo,
  value: unknown,
  subject: Subject,
): Record<string, ServerConnectionOptions> {
  if (!isPlainObject(value)) return mustBe(subject, option.expected, value);
  // fromEntries: keys such as "__proto__" stay plain data.
  return Object.fromEntries(
    Object.entries(value).map(([server, options]) => {
      const at = (key?: string): Subject => {
        const path = key === undefined ? server : `${server}.${key}`;
        return { key: `${subject.key}.${path}`, label: `${subject.label} entry ${JSON.stringify(path)}` };
      };
      if (!isPlainObject(options)) return mustBe(at(), 'an object', options);
      const seen = new Set<string>();
      const entries = Object.entries(options).map(([key, v]): [string, unknown] => {
        const name = rubyAliases.get(key) ?? key;
        if (seen.has(name)) fail(at(), `must not set both \`${name}\` and its Ruby alias`);
        seen.add(name);
        const check = connectionOptionChecks.get(name);
        if (check !== undefined && !check[1](v)) mustBe(at(key), check[0], v);
        return [name, Array.isArray(v) ? [...(v as unknown[])] : v];
      });
      for (const [ours, bunny] of bunnyTlsNames) {
        if (seen.has(ours) && seen.has(bunny)) fail(at(), `must not set both \`${ours}\` and \`${bunny}\``);
      }
      // TLS material next to a plain connection would be ignored without a word: refuse it.
      const tlsKeys = [...seen].filter((name) => tlsOptionChecks.has(name));
      if (tlsKeys.length > 0 && !entries.some(([name, v]) => name === 'tls' && v === true)) {
        fail(
          at(),
          `sets TLS options (${tlsKeys.map((k) => `\`${k}\``).join(', ')}) but not \`tls: true\` (Ruby: \`ssl: true\`)`,
        );
      }
      return [server, Object.fromEntries(entries)];
    }),
  );
}

/**
 * Checks one option value and returns it normalized (server lists split, aliases resolved) and copied, so the
 * result shares nothing with the input. Idempotent: normalized values pass again unchanged.
 */
export function normalizeOption(option: ConfigOptionInfo, value: unknown, subject: Subject): unknown {
  switch (option.type) {
    case 'string':
      if (option.optional === true && (value === undefined || value === null)) return undefined;
      if (typeof value !== 'string' || (option.nonEmpty === true && value === '')) {
        return mustBe(subject, option.expected, value);
      }
      return value;
    case 'boolean':
      return typeof value === 'boolean' ? value : mustBe(subject, option.expected, value);
    case 'integer':
    case 'number':
      return checkNumber(option, value, subject);
    case 'heartbeat': {
      if (value === 'server') return value;
      const ok = typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 65535;
      return ok ? value : mustBe(subject, option.expected, value);
    }
    case 'serverList':
      return checkServerList(option, value, subject);
    case 'object':
      if (!isPlainObject(value)) return mustBe(subject, option.expected, value);
      try {
        return structuredClone(value);
      } catch (error) {
        return fail(subject, 'must contain plain data only', error);
      }
    case 'serverConnectionOptions':
      return checkConnectionOptions(option, value, subject);
  }
}

function levenshtein(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + cost);
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The closest candidate, if it is close enough to be a plausible typo. */
export function closest(key: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(key.length / 4)) + 1;
  for (const candidate of candidates) {
    const distance = levenshtein(key.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best;
}

/** Finds an option by camelCase or Ruby (snake_case) name. */
export const findOption = (key: string): ConfigOptionInfo | undefined =>
  configOptions.find((o) => o.name === key || o.rubyName === key);
