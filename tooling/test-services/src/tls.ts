import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Paths of the files `createTlsFiles` wrote (PEM). */
export interface TlsFiles {
  readonly dir: string;
  /** The private CA that signed the server and client certificates. */
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  /** A client certificate signed by the CA (for `verify_peer` listeners). */
  readonly clientCert: string;
  /** The client key, encrypted with `clientKeyPassphrase`. */
  readonly clientKey: string;
  readonly clientKeyPassphrase: string;
  /** A CA that signed nothing here: trusting only it must fail the handshake. */
  readonly otherCa: string;
}

export interface TlsFileOptions {
  /** DNS names of the server certificate (default `localhost`). */
  readonly dnsNames?: readonly string[];
  /** IP addresses of the server certificate (default `127.0.0.1`). */
  readonly ipAddresses?: readonly string[];
}

async function openssl(dir: string, args: readonly string[]): Promise<void> {
  try {
    await execFileAsync('openssl', args, { cwd: dir, timeout: 30_000 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr.trim()}`, { cause: error });
  }
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];

/**
 * A private CA, a server certificate and a client certificate with a passphrase-protected key, generated with
 * openssl in a new temporary directory (`ca.pem`, `server-cert.pem`, `server-key.pem`, the names
 * `scripts/services.sh --tls` expects). Valid for two days.
 */
export async function createTlsFiles(options: TlsFileOptions = {}): Promise<TlsFiles> {
  const dir = await mkdtemp(join(tmpdir(), 'beetle-tls-'));
  const dns = options.dnsNames ?? ['localhost'];
  const ips = options.ipAddresses ?? ['127.0.0.1'];
  const passphrase = `pass-${Math.random().toString(36).slice(2)}`;
  const ca = async (name: string, cn: string): Promise<void> =>
    openssl(dir, [
      'req',
      '-x509',
      ...EC_KEY,
      '-nodes',
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
    ]);
  await Promise.all([ca('ca', 'Beetle test CA'), ca('other-ca', 'Unrelated test CA')]);

  const san = [...dns.map((n) => `DNS:${n}`), ...ips.map((ip) => `IP:${ip}`)].join(',');
  await writeFile(join(dir, 'server.ext'), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  await writeFile(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  const signed = async (name: string, cn: string): Promise<void> => {
    await openssl(dir, [
      'req',
      ...EC_KEY,
      '-nodes',
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}.csr`,
      '-subj',
      `/CN=${cn}`,
    ]);
    await openssl(dir, [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca-key.pem',
      '-set_serial',
      String(Date.now() + (name === 'server' ? 1 : 2)),
      '-out',
      `${name}-cert.pem`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ]);
  };
  await Promise.all([signed('server', dns[0] ?? ips[0] ?? 'localhost'), signed('client', 'beetle-client')]);
  await openssl(dir, [
    'pkey',
    '-in',
    'client-key.pem',
    '-aes256',
    '-passout',
    `pass:${passphrase}`,
    '-out',
    'client-key-encrypted.pem',
  ]);
  return {
    dir,
    ca: join(dir, 'ca.pem'),
    serverCert: join(dir, 'server-cert.pem'),
    serverKey: join(dir, 'server-key.pem'),
    clientCert: join(dir, 'client-cert.pem'),
    clientKey: join(dir, 'client-key-encrypted.pem'),
    clientKeyPassphrase: passphrase,
    otherCa: join(dir, 'other-ca.pem'),
  };
}
