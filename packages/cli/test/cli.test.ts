import { describe, expect, it } from 'vitest';
import { commands } from '../src/index.js';
import { lines, run, tempFile } from './helpers.js';

describe('help', () => {
  it('lists every command at the top level', async () => {
    const result = await run(['--help']);
    expect(result.code).toBe(0);
    for (const command of commands) expect(result.stdout).toContain(`  ${command.name} `);
    expect(result.stderr).toBe('');
  });

  it('prints help for every command, mentioning each of its flags', async () => {
    for (const command of commands) {
      const result = await run([command.name, '--help']);
      expect(result.code, command.name).toBe(0);
      expect(result.stdout).toContain(`Usage: beetle ${command.name}`);
      for (const flag of Object.keys(command.flags))
        expect(result.stdout, command.name).toContain(`--${flag}`);
      expect(result.stdout).toContain('--config-file');
      // `help <command>` and aliases (the Go command's names) print the same
      expect((await run(['help', command.name])).stdout).toBe(result.stdout);
      for (const alias of command.aliases ?? [])
        expect((await run([alias, '-h'])).stdout).toBe(result.stdout);
    }
  });

  it('explains the garbage collection threshold sign', async () => {
    const { stdout } = await run(['gc', '--help']);
    expect(stdout).toContain('expires < now - threshold');
    expect(stdout).toContain('weak spot 9');
  });
});

describe('usage errors exit 2 with one line', () => {
  it.each([
    [['frobnicate'], /unknown command `frobnicate`/],
    [['publish', 'x', 'y', '--frob'], /unknown flag --frob/],
    [['status', '--timeout'], /--timeout needs a value/],
    [['publish'], /needs <message>/],
    [['config', 'extra'], /unexpected argument/],
    [['listen', 'q', '--count', 'many'], /--count must be an integer/],
    [['gc', '--threshold', 'soon'], /--threshold must be seconds/],
    [['delete-keys', '--delete-before', '10'], /--queue-prefix is required/],
    [['copy-keys', '--queue-prefix', 'x'], /--target-redis host:port is required/],
    [['--servers', 'x', 'status'], /expected a command/],
  ])('%j', async (argv, pattern) => {
    const result = await run(argv);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^beetle: usage: /);
    expect(result.stderr).toMatch(pattern);
    expect(result.stdout).toBe('');
  });

  it('prints the top-level help on stderr without a command', async () => {
    const result = await run([]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('Commands:');
  });
});

describe('configuration errors exit 2 naming the key', () => {
  it('rejects an unknown key in a configuration file', async () => {
    const file = tempFile('beetle.yml', 'servers: a:5672\nredis_sever: b:6379\n');
    const result = await run(['config', '--config-file', file]);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^beetle: configuration: .*redis_sever.*did you mean `redis_server`/);
  });

  it('rejects a value of the wrong type in a file found through BEETLE_CONFIG_FILE', async () => {
    const file = tempFile('beetle.json', JSON.stringify({ redis_db: 'four' }));
    const result = await run(['config'], { env: { BEETLE_CONFIG_FILE: file } });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^beetle: configuration: option `redis_db` in .*beetle\.json must be/);
  });

  it('names the environment variable or the flag at fault', async () => {
    const env = await run(['config'], { env: { BEETLE_PREFETCH_COUNT: '0' } });
    expect(env.code).toBe(2);
    expect(env.stderr).toContain('BEETLE_PREFETCH_COUNT');
    const flag = await run(['config', '--set', 'prefetch_count=lots']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/--set prefetch_count: option `prefetchCount` must be/);
    const unknown = await run(['config', '--set', 'prefetch=1']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown option `prefetch`');
  });

  it('fails for a missing configuration file', async () => {
    const result = await run(['status', '--config-file', '/nonexistent/beetle.yml']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^beetle: configuration: cannot read configuration file \/nonexistent/);
  });

  it('rejects a bad topology file', async () => {
    const file = tempFile('topology.yml', 'queues:\n  orders:\n    lazzy: true\n');
    const result = await run(['status', '--topology', file, '--servers', '127.0.0.1:1']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^beetle: configuration: .*lazzy/);
  });
});

describe('config', () => {
  it('merges file < environment < flags and masks passwords', async () => {
    const file = tempFile(
      'beetle.yml',
      [
        'servers: file1:5672',
        'redis_db: 6',
        'password: file-secret',
        'server_connection_options:',
        '  "file1:5672": { user: u, pass: per-server-secret }',
        'system_name: from-file',
      ].join('\n'),
    );
    const result = await run(
      ['config', '--config-file', file, '--redis-db', '7', '--redis-password', 'r-secret'],
      {
        env: { BEETLE_SYSTEM_NAME: 'from-env', BEETLE_REDIS_DB: '5' },
      },
    );
    expect(result.code).toBe(0);
    const out = lines(result.stdout);
    expect(out).toContain('servers: "file1:5672"');
    expect(out).toContain('redis_db: 7');
    expect(out).toContain('system_name: from-env');
    expect(out).toContain('password: "********"');
    expect(out).toContain('redis_password: "********"');
    expect(result.stdout).not.toContain('secret');
    expect(result.stdout).toContain('"user":"u"');

    const json = await run(['config', '--config-file', file, '--json']);
    const parsed = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(parsed).toMatchObject({
      servers: ['file1:5672'],
      redis_db: 6,
      password: '********',
      redis_password: null,
      server_connection_options: { 'file1:5672': { user: 'u', password: '********' } },
    });
    expect(json.stdout).not.toContain('secret');
  });

  it('masks TLS passphrases and inline private keys (also under Bunny names), shows file paths', async () => {
    const file = tempFile(
      'beetle.yml',
      [
        'servers: tls1:5671,tls2:5671',
        'server_connection_options:',
        '  "tls1:5671":',
        '    ssl: true',
        '    ca: /etc/beetle/ca.pem',
        '    cert: /etc/beetle/client.pem',
        '    key: /etc/beetle/client-key.pem',
        '    passphrase: key-secret',
        '  "tls2:5671":',
        '    ssl: true',
        '    pass: tls2-secret',
        '    tls_key: |',
        '      -----BEGIN ENCRYPTED PRIVATE KEY-----',
        '      MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhsecretkeymaterial',
        '      -----END ENCRYPTED PRIVATE KEY-----',
        '    passphrase: other-secret',
        '    pfx: /etc/beetle/client.p12',
      ].join('\n'),
    );
    for (const argv of [['config'], ['config', '--json']]) {
      const result = await run([...argv, '--config-file', file]);
      expect(result.code).toBe(0);
      expect(result.stdout).not.toMatch(/secret|PRIVATE KEY/);
      const options = (
        argv.includes('--json')
          ? (JSON.parse(result.stdout) as Record<string, unknown>)['server_connection_options']
          : JSON.parse(/^server_connection_options: (.*)$/m.exec(result.stdout)?.[1] ?? 'null')
      ) as Record<string, Record<string, unknown>>;
      expect(options).toEqual({
        'tls1:5671': {
          tls: true,
          ca: '/etc/beetle/ca.pem',
          cert: '/etc/beetle/client.pem',
          key: '/etc/beetle/client-key.pem',
          passphrase: '********',
        },
        'tls2:5671': {
          tls: true,
          password: '********',
          tls_key: '********',
          passphrase: '********',
          pfx: '/etc/beetle/client.p12',
        },
      });
    }
  });
});

describe('unreachable services exit 1 with one line and no stack', () => {
  it('publish', async () => {
    const result = await run([
      'publish',
      'greeting',
      'hello',
      '--servers',
      '127.0.0.1:1',
      '--set',
      'publish_timeout=5',
    ]);
    expect(result.code).toBe(1);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^beetle: no-message-sent: .*ECONNREFUSED/);
    expect(result.stderr).not.toMatch(/\bat .*\.ts:\d+/);
    expect(result.stdout).toBe('');
  });

  it.each([['listen'], ['trace'], ['policy-updates']])('%s', async (command) => {
    const argv = [
      command,
      ...(command === 'policy-updates' ? [] : ['q']),
      '--servers',
      '127.0.0.1:1',
      '--count',
      '1',
    ];
    const result = await run(argv);
    expect(result.code).toBe(1);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^beetle: broker-connect: no broker reachable: .*ECONNREFUSED/);
    expect(result.stdout).toBe('');
  });

  it('gc against a Redis that is not there', async () => {
    const result = await run(['gc', '--redis-server', '127.0.0.1:1', '--set', 'redis_failover_timeout=0']);
    expect(result.code).toBe(1);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^beetle: redis: cannot connect to Redis 127\.0\.0\.1:1/);
  });

  it('gc with a master file naming no master', async () => {
    const file = tempFile('redis-master', 'other/127.0.0.1:6379\n');
    const result = await run([
      'gc',
      '--redis-server',
      file,
      '--system-name',
      'mine',
      '--set',
      'redis_failover_timeout=0',
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      /^beetle: no-redis-master: the Redis master file .* names no valid master for system "mine"/,
    );
  });

  it('--verbose adds the stack', async () => {
    const result = await run([
      'gc',
      '--redis-server',
      '127.0.0.1:1',
      '--set',
      'redis_failover_timeout=0',
      '-v',
    ]);
    expect(result.code).toBe(1);
    expect(lines(result.stderr).length).toBeGreaterThan(1);
    expect(result.stderr).toMatch(/\n\s+at /);
  });
});
