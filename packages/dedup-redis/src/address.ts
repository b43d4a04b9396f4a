/** Ruby's test for a literal `host:port` in `redis_server` (anything else is the path of a master file). */
export const REDIS_ADDRESS_PATTERN = /^\S+:\d+$/;

export const isRedisAddress = (value: string): boolean => REDIS_ADDRESS_PATTERN.test(value);

/** Splits `host:port` at the last colon (so `[::1]:6379` and `::1:6379` keep their host). */
export function parseRedisAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(':');
  let host = address.slice(0, at);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number.parseInt(address.slice(at + 1), 10) };
}
