import { rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BrokerError, silentLogger, type ServerConnectionOptions } from '@beetle/core';
import {
  createTlsFiles,
  freePort,
  startBroker,
  type ServiceHandle,
  type TlsFiles,
} from '@beetle/test-services';
import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { config, uid } from './helpers.js';

/**
 * Two disposable brokers with an amqps listener and a server certificate of a private CA generated here: one
 * without client certificates, one with `verify_peer` + `fail_if_no_peer_cert`. The certificate names
 * `localhost` and `rabbit-tls.beetle.test`, not 127.0.0.1.
 */
const OPEN_PORT = 5711;
const PEER_PORT = 5713;
const CERT_NAME = 'rabbit-tls.beetle.test';

let files: TlsFiles;
let openBroker: ServiceHandle | undefined;
let peerBroker: ServiceHandle | undefined;
let openTls: number;
let peerTls: number;
const opened: BrokerConnection[] = [];

beforeAll(async () => {
  files = await createTlsFiles({ dnsNames: ['localhost', CERT_NAME], ipAddresses: [] });
  openTls = await freePort();
  do peerTls = await freePort();
  while (peerTls === openTls);
  [openBroker, peerBroker] = await Promise.all([
    startBroker(OPEN_PORT, { tls: { port: openTls, certDir: files.dir } }),
    startBroker(PEER_PORT, { tls: { port: peerTls, certDir: files.dir, verifyPeer: true } }),
  ]);
}, 240_000);

afterAll(async () => {
  await Promise.all([openBroker?.stop(), peerBroker?.stop()]);
  if (files !== undefined) await rm(files.dir, { recursive: true, force: true });
}, 180_000);

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
});

/** A connection to `server` with `tls: true` and `options` as its server_connection_options. */
function tlsConnection(server: string, options: ServerConnectionOptions, connectionName?: string) {
  const c = new BrokerConnection(
    brokerOptions(
      config({
        servers: [server],
        serverConnectionOptions: { [server]: { tls: true, ...options } },
        ...(connectionName === undefined ? {} : { connectionName }),
      }),
      server,
      silentLogger,
    ),
  );
  opened.push(c);
  return c;
}

/** A confirmed publish: the AMQP session over TLS works end to end. */
async function publishes(c: BrokerConnection): Promise<void> {
  const channel = await c.publishChannel();
  await channel.publish('', `beetle-tls-nowhere-${uid()}`, Buffer.from('x'), {});
}

const failure = async (c: BrokerConnection): Promise<BrokerError> => {
  const error = await c.publishChannel().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(BrokerError);
  return error as BrokerError;
};

interface ConnectionInfo {
  name: string;
  ssl: boolean;
  ssl_protocol?: string;
  peer_cert_subject?: string;
  client_properties?: { connection_name?: string };
}

/** The broker's view of our connection (management API; it lists a connection shortly after it opened). */
async function brokerView(amqpPort: number, connectionName: string): Promise<ConnectionInfo> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const response = await fetch(`http://127.0.0.1:1${amqpPort}/api/connections`, {
      headers: { authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
      signal: AbortSignal.timeout(5000),
    });
    const all = (await response.json()) as ConnectionInfo[];
    const found = all.find((c) => c.client_properties?.connection_name?.startsWith(connectionName));
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`connection ${connectionName} not listed by the broker`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

describe('amqps with a private CA', () => {
  it('connects with the CA configured (file path), publishing and consuming connections both over TLS', async () => {
    const name = `beetle-tls-${uid()}`;
    const c = tlsConnection(`localhost:${openTls}`, { ca: files.ca }, name);
    await publishes(c);
    const consumer = await c.openConsumerChannel(1);
    await consumer.close();
    const view = await brokerView(OPEN_PORT, name);
    expect(view.ssl).toBe(true);
    expect(view.ssl_protocol).toMatch(/^tlsv1\.[23]$/);
  });

  it('takes the CA as PEM text, and as Ruby/Bunny `tls_ca_certificates` (a list)', async () => {
    await publishes(tlsConnection(`localhost:${openTls}`, { ca: readFileSync(files.ca, 'utf8') }));
    await publishes(
      tlsConnection(`localhost:${openTls}`, { tls_ca_certificates: [files.otherCa, files.ca] }),
    );
  });

  it('without the CA: a certificate error that says what to configure', async () => {
    const error = await failure(tlsConnection(`localhost:${openTls}`, {}));
    expect(error.reason).toBe('broker-connect');
    expect(error.message).toMatch(
      /TLS handshake failed \(a private CA needs `ca` in server_connection_options\)/,
    );
    expect(error.message).toMatch(/self-signed certificate in certificate chain/);
  });

  it('trusting another CA fails the handshake', async () => {
    const error = await failure(tlsConnection(`localhost:${openTls}`, { ca: files.otherCa }));
    expect(error.message).toMatch(
      /TLS handshake failed \(publisher connection\): .*(self-signed certificate|unable to verify)/,
    );
  });

  it('checks the certificate against `servername` (SNI), which an IP address alone does not match', async () => {
    const byIp = `127.0.0.1:${openTls}`;
    const mismatch = await failure(tlsConnection(byIp, { ca: files.ca }));
    expect(mismatch.message).toMatch(
      /TLS handshake failed \(publisher connection\): .*Hostname\/IP does not match/,
    );
    await publishes(tlsConnection(byIp, { ca: files.ca, servername: CERT_NAME }));
  });

  it('rejectUnauthorized: false (Ruby: verify_peer: false) accepts the unknown CA', async () => {
    await publishes(tlsConnection(`localhost:${openTls}`, { rejectUnauthorized: false }));
    await publishes(tlsConnection(`localhost:${openTls}`, { verify_peer: false }));
  });

  it('a missing CA file is a broker-connect error naming the file', async () => {
    const missing = `${files.dir}/no-such-ca.pem`;
    const error = await failure(tlsConnection(`localhost:${openTls}`, { ca: missing }));
    expect(error.reason).toBe('broker-connect');
    expect(error.message).toContain(`cannot read the TLS ca file ${missing}`);
  });
});

describe('amqps with client certificates (verify_peer, fail_if_no_peer_cert)', () => {
  it('connects with the client certificate and its passphrase-protected key; the broker sees the certificate', async () => {
    const name = `beetle-mtls-${uid()}`;
    const c = tlsConnection(
      `localhost:${peerTls}`,
      { ca: files.ca, cert: files.clientCert, key: files.clientKey, passphrase: files.clientKeyPassphrase },
      name,
    );
    await publishes(c);
    const view = await brokerView(PEER_PORT, name);
    expect(view.ssl).toBe(true);
    expect(view.peer_cert_subject).toBe('CN=beetle-client');
  });

  it('takes Bunny names (tls_cert, tls_key) and PEM text', async () => {
    await publishes(
      tlsConnection(`localhost:${peerTls}`, {
        ca: files.ca,
        tls_cert: readFileSync(files.clientCert, 'utf8'),
        tls_key: files.clientKey,
        passphrase: files.clientKeyPassphrase,
      }),
    );
  });

  it('is refused without a client certificate', async () => {
    const error = await failure(tlsConnection(`localhost:${peerTls}`, { ca: files.ca }));
    expect(error.reason).toBe('broker-connect');
    expect(error.message).toMatch(/TLS handshake failed \(publisher connection\): .*certificate required/);
  });

  it('a wrong passphrase is a broker-connect error', async () => {
    const error = await failure(
      tlsConnection(`localhost:${peerTls}`, {
        ca: files.ca,
        cert: files.clientCert,
        key: files.clientKey,
        passphrase: 'wrong',
      }),
    );
    expect(error.reason).toBe('broker-connect');
    expect(error.message).toMatch(
      /cannot decrypt the TLS key \(wrong passphrase\?\) \(publisher connection\): .*bad decrypt/,
    );
  });
});
