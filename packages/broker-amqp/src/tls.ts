import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { ConfigurationError, type BrokerAddress } from '@beetle/core';
import { errorMessage } from '@beetle/core/kit';

/** PEM text (rather than a file path), as configuration files may carry either. */
export const isInlinePem = (value: string): boolean => /-----BEGIN [A-Z0-9 ]+-----/.test(value);

async function material(what: string, value: string): Promise<string | Buffer> {
  if (isInlinePem(value)) return value;
  try {
    return await readFile(value);
  } catch (error) {
    throw new ConfigurationError(`cannot read the TLS ${what} file ${value}: ${errorMessage(error)}`, {
      cause: error,
    });
  }
}

/**
 * The `tls.connect` options of a broker with `tls` (none for plain connections): CA, client certificate, key,
 * passphrase, PKCS#12, SNI name and verification from its `serverConnectionOptions`. Files are read at every
 * connect, so renewed certificates are picked up by the next connection.
 */
export async function tlsSocketOptions(address: BrokerAddress): Promise<ConnectionOptions> {
  if (!address.tls) return {};
  const tls = address.tlsOptions ?? {};
  const [ca, cert, key, pfx] = await Promise.all([
    tls.ca === undefined ? undefined : Promise.all(tls.ca.map((ca) => material('ca', ca))),
    tls.cert === undefined ? undefined : material('cert', tls.cert),
    tls.key === undefined ? undefined : material('key', tls.key),
    tls.pfx === undefined
      ? undefined
      : readFile(tls.pfx).catch((error: unknown) => {
          throw new ConfigurationError(`cannot read the TLS pfx file ${tls.pfx}: ${errorMessage(error)}`, {
            cause: error,
          });
        }),
  ]);
  const options: ConnectionOptions = {
    // The name the certificate must match, and SNI. RFC 6066 forbids IP addresses in SNI, but amqplib puts
    // the host there when this is unset (Node warns once); set `servername` to connect by IP without it.
    servername: tls.servername ?? (isIP(address.host) === 0 ? address.host : undefined),
  };
  if (ca !== undefined) options.ca = ca;
  if (cert !== undefined) options.cert = cert;
  if (key !== undefined) options.key = key;
  if (pfx !== undefined) options.pfx = pfx;
  if (tls.passphrase !== undefined) options.passphrase = tls.passphrase;
  if (tls.rejectUnauthorized !== undefined) options.rejectUnauthorized = tls.rejectUnauthorized;
  return options;
}

/** Node's codes for a broker certificate that no trusted CA signed. */
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
]);

/**
 * What went wrong when a connect failed on TLS (a certificate check, an alert from the broker, a key that does
 * not load), for the error message; `undefined` for other failures.
 */
export function tlsFailure(error: unknown, caConfigured: boolean): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return undefined;
  if (code === 'ERR_OSSL_BAD_DECRYPT') return 'cannot decrypt the TLS key (wrong passphrase?)';
  if (code.startsWith('ERR_OSSL_')) return 'cannot load the TLS certificate or key';
  if (UNTRUSTED.has(code) && !caConfigured) {
    return 'TLS handshake failed (a private CA needs `ca` in server_connection_options)';
  }
  if (
    code.startsWith('ERR_SSL_') ||
    code.startsWith('ERR_TLS_') ||
    /CERT|SELF_SIGNED|UNABLE_TO_/.test(code)
  ) {
    return 'TLS handshake failed';
  }
  return undefined;
}
