import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type ServiceHandle } from '@beetle/test-services';
import { lines, redis, redisServer, run, start, tempFile, uid, type CliRun } from './helpers.js';

// Own brokers in the helper's port range: AMQP 8150/8151, management API on 18150/18151. The page on 18170.
const PORTS = [8150, 8151];
const HTTP_PORT = 18170;
/** A database of the machine's Redis this test alone writes to (only its own keys, deleted afterwards). */
const DB = 14;
type RespClient = Awaited<ReturnType<typeof redis>>;
const ensureChromium = fileURLToPath(
  new URL('../../../tooling/test-services/bin/ensure-chromium.sh', import.meta.url),
);

describe('beetle status --serve in headless Chromium', () => {
  let brokers: ServiceHandle[] = [];
  let browser: Browser | undefined;
  let page: Page;
  let store: RespClient;
  let db0: RespClient;
  let previousLastGc: string | null = null;
  const abort = new AbortController();
  let served: { ready: Promise<void>; done: Promise<CliRun> } | undefined;
  const queue = `statuspage${uid()}`;
  const servers = PORTS.map((port) => `127.0.0.1:${port}`);
  const flags = ['--servers', servers.join(','), '--redis-server', redisServer, '--redis-db', String(DB)];
  const seeded = [randomUUID(), randomUUID()];

  beforeAll(async () => {
    // Installs Debian's chromium when it is missing (apt, as root); any failure fails the test.
    await promisify(execFile)('bash', [ensureChromium], { timeout: 600_000 });
    [brokers, [store, db0]] = await Promise.all([
      Promise.all(PORTS.map((port) => startBroker(port))),
      Promise.all([redis(DB), redis(0)]),
    ]);
    previousLastGc = await db0.get('beetle:lastgc');
  }, 660_000);

  afterAll(async () => {
    await browser?.close();
    abort.abort();
    await served?.done;
    await Promise.all(brokers.map((b) => b.stop()));
    if (store !== undefined) {
      await store.del(seeded.map((id) => `msgid:${queue}:${id}:expires`));
      store.close();
    }
    if (db0 !== undefined) {
      // beetle:lastgc lives in db 0 of the shared Redis: put back what was there.
      if (previousLastGc === null) await db0.del(['beetle:lastgc']);
      else await db0.set('beetle:lastgc', previousLastGc);
      db0.close();
    }
  }, 180_000);

  it('shows both brokers up with their queues, then one broker down after a refresh', async () => {
    const topology = tempFile('topology.yml', `queues:\n  ${queue}:\n    dead_lettering: true\n`);
    expect((await run(['setup', '--topology', topology, ...flags])).code).toBe(0);
    for (let i = 0; i < 3; i++) {
      const published = await run([
        'publish',
        queue,
        `m${i}`,
        '--redundant',
        '--topology',
        topology,
        ...flags,
      ]);
      expect(published.stdout.trim()).toBe('2');
    }
    // Two messages in the dedup store (far from expiry), and a gc run that keeps them.
    const expires = String(Math.floor(Date.now() / 1000) + 86_400);
    for (const id of seeded) await store.set(`msgid:${queue}:${id}:expires`, expires);
    const startedAt = Math.floor(Date.now() / 1000);
    const gc = await run(['gc', '--redis-server', redisServer, '--databases', String(DB), '--pause', '0']);
    expect(gc.code).toBe(0);

    served = start(
      [
        'status',
        '--serve',
        '--port',
        String(HTTP_PORT),
        '--refresh',
        '1',
        '--timeout',
        '1',
        '--scan',
        '--topology',
        topology,
        ...flags,
      ],
      'status page listening',
      { signal: abort.signal },
    );
    await served.ready;

    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      // Running as root in a container: Chromium's sandbox needs user namespaces it may not get.
      args: ['--no-sandbox'],
    });
    page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${HTTP_PORT}/`);
    const broker = (server: string) => page.locator(`[data-testid=broker][data-server="${server}"]`);
    const depth = (server: string, name: string) =>
      broker(server).locator(`[data-testid=queue][data-queue="${name}"] [data-testid=messages]`);

    for (const server of servers) {
      await expect.poll(() => broker(server).getAttribute('data-state'), { timeout: 10_000 }).toBe('up');
      expect(await broker(server).locator('h3').innerText()).toBe(`${server} up`);
      // The management API's counts lag behind by its statistics interval (5 s by default): the page catches up.
      await expect.poll(() => depth(server, queue).innerText(), { timeout: 15_000 }).toBe('3');
      expect(await depth(server, `${queue}_dead_letter`).innerText()).toBe('0');
      const deadRow = broker(server).locator(`[data-testid=queue][data-queue="${queue}_dead_letter"] td`);
      expect(await deadRow.first().innerText()).toBe(`${queue}_dead_letter (dead letters of ${queue})`);
      const consumers = broker(server).locator(
        `[data-testid=queue][data-queue="${queue}"] [data-testid=consumers]`,
      );
      expect(await consumers.innerText()).toBe('0');
    }
    expect(await page.getByTestId('redis-master').innerText()).toBe(redisServer);
    expect(Number(await page.getByTestId('redis-keys').innerText())).toBeGreaterThanOrEqual(seeded.length);
    const dedupRow = page.locator(`[data-testid=dedup-queue][data-queue="${queue}"] td`);
    expect(await dedupRow.allInnerTexts()).toEqual([queue, String(seeded.length)]);
    const gcTime = Date.parse(await page.getByTestId('gc-time').innerText()) / 1000;
    expect(gcTime).toBeGreaterThanOrEqual(startedAt);
    expect(await page.getByTestId('gc-counts').innerText()).toMatch(/messages scanned, 0 expired deleted/);

    // The JSON the page shows, as a monitoring system would read it.
    const json = (await (await fetch(`http://127.0.0.1:${HTTP_PORT}/status.json`)).json()) as {
      brokers: { server: string; reachable: boolean }[];
    };
    expect(json.brokers.map((b) => [b.server, b.reachable])).toEqual(servers.map((s) => [s, true]));

    // One broker stops: the page (no reload, its own refresh) shows it down and the other one still up.
    const generatedBefore = await page.locator('body').getAttribute('data-generated-at');
    await brokers[1]!.stop();
    await expect.poll(() => broker(servers[1]!).getAttribute('data-state'), { timeout: 15_000 }).toBe('down');
    expect(await page.locator('body').getAttribute('data-generated-at')).not.toBe(generatedBefore);
    expect(await broker(servers[1]!).locator('h3').innerText()).toBe(`${servers[1]} down`);
    expect(await broker(servers[1]!).getByTestId('broker-error').innerText()).toMatch(
      /ECONNREFUSED|refused/i,
    );
    expect(await broker(servers[0]!).getAttribute('data-state')).toBe('up');
    expect(await depth(servers[0]!, queue).innerText()).toBe('3');
    expect(await page.getByTestId('banner').isVisible()).toBe(false);

    abort.abort();
    const done = await served.done;
    expect(done.code).toBe(0);
    expect(lines(done.stderr)).toContain(
      `status page listening on http://127.0.0.1:${HTTP_PORT}/ (JSON: http://127.0.0.1:${HTTP_PORT}/status.json)`,
    );
  }, 90_000);
});
