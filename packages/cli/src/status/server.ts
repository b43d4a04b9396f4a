import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '@beetle/core';
import { errorMessage } from '../output.js';
import type { StatusReport } from './gather.js';
import { statusPage } from './page.js';

export interface StatusServerOptions {
  readonly host: string;
  readonly port: number;
  /** Gathers a fresh report (bounded by its own timeouts). */
  readonly gather: () => Promise<StatusReport>;
  /** A report younger than this is served again instead of gathering (ms). */
  readonly maxAgeMs: number;
  /** How often the page reloads /status.json (seconds). */
  readonly refreshSeconds: number;
  readonly logger: Logger;
}

export interface StatusServer {
  /** `http://host:port` as bound (port 0 resolved). */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * `GET /status.json` and `GET /` (the page). Requests share one gathering at a time and a report younger than
 * `maxAgeMs`, so any number of open pages costs one round of broker and Redis calls per interval.
 */
export async function startStatusServer(options: StatusServerOptions): Promise<StatusServer> {
  let latest: { report: StatusReport; at: number } | undefined;
  let inFlight: Promise<StatusReport> | undefined;
  const report = (): Promise<StatusReport> => {
    if (latest !== undefined && Date.now() - latest.at < options.maxAgeMs)
      return Promise.resolve(latest.report);
    inFlight ??= options
      .gather()
      .then((fresh) => {
        latest = { report: fresh, at: Date.now() };
        return fresh;
      })
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  };
  const page = statusPage(options.refreshSeconds);

  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/' || path === '/index.html') {
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'cache-control': 'no-store',
        // Self-contained: nothing but its own inline script and style, and fetches to this server.
        'content-security-policy':
          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
      });
      res.end(page);
      return;
    }
    if (path === '/status.json') {
      report().then(
        (body) => {
          res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
          res.end(JSON.stringify(body));
        },
        (error: unknown) => {
          options.logger.error({ err: error }, 'status: gathering failed');
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: errorMessage(error) }));
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
