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

/**
 * The master of `systemName` named by the content of a Redis master file (Ruby `extract_redis_master`,
 * reference §4.8): either one legacy line `host:port`, or `system_name/host:port` lines (an invalidated system
 * is written as `name/`). A line without `/` applies whatever the system name; the last matching line wins;
 * lines are trimmed. Returns `undefined` when no master is named (blank file, no matching line, empty entry).
 */
export function parseRedisMasterFile(content: string, systemName: string): string | undefined {
  let master: string | undefined;
  for (const rawLine of content.split('\n')) {
    const line = rawLine.trim();
    if (line === '') continue;
    const slash = line.indexOf('/');
    if (slash === -1) {
      master = line;
    } else if (line.slice(0, slash).trim() === systemName) {
      master = line.slice(slash + 1).trim();
    }
  }
  return master === '' ? undefined : master;
}
