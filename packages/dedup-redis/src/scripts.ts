/**
 * The Lua scripts behind the store's steps, one script call (one round trip) per step. Each script runs the
 * very commands Ruby Beetle sends one by one (reference §4.4, §12), atomically, on keys passed as KEYS so the
 * scripts would also run on a cluster (all keys of a message share no hash tag, though: Ruby's key schema
 * has none, so on a cluster they would have to live on one node; we do not target cluster).
 *
 * Values are written exactly as Ruby writes them: plain decimal strings, `incomplete`/`completed`, timeout
 * `0`. Numbers read back are parsed like Ruby's `to_i` (leading integer, else 0).
 */

/** Ruby's `String#to_i` and decimal formatting, shared by the scripts. */
const LUA_HELPERS = `
local function to_i(value)
  if not value then return 0 end
  local digits = string.match(value, '^%s*([-+]?%d+)')
  if not digits then return 0 end
  if string.sub(digits, 1, 1) == '+' then digits = string.sub(digits, 2) end
  return tonumber(digits)
end
local function num(value)
  if value == math.floor(value) and value > -1e15 and value < 1e15 then
    return string.format('%d', value)
  end
  return string.format('%.17g', value)
end
`;

export interface ScriptDefinition {
  readonly numberOfKeys: number;
  readonly lua: string;
}

/**
 * First sighting or state. KEYS: status, expires, timeout, attempts, delay, exceptions. ARGV: expires_at,
 * timeout_at. Returns `{1, attempts}` when MSETNX succeeded (and attempts was incremented), else
 * `{0, status, delay, timeout, attempts, exceptions}` (Ruby's MGET, nil for missing keys).
 */
export const CLAIM: ScriptDefinition = {
  numberOfKeys: 6,
  lua: `
if redis.call('msetnx', KEYS[1], 'incomplete', KEYS[2], ARGV[1], KEYS[3], ARGV[2]) == 1 then
  return {1, redis.call('incr', KEYS[4])}
end
local state = redis.call('mget', KEYS[1], KEYS[5], KEYS[3], KEYS[4], KEYS[6])
return {0, state[1], state[2], state[3], state[4], state[5]}
`,
};

/**
 * Mutex for a retry. KEYS: mutex, timeout, attempts. ARGV: now, timeout_at, stale_after. A held mutex younger
 * than stale_after is refused (and, unlike Ruby, left in place: reference §10 weak spot 6); a free or stale
 * one is taken (`mutex=now`), then `timeout=timeout_at` and `INCR attempts`. Returns the attempts, or 0 when
 * refused.
 */
export const ACQUIRE: ScriptDefinition = {
  numberOfKeys: 3,
  lua: `${LUA_HELPERS}
local held = redis.call('get', KEYS[1])
if held and to_i(held) + tonumber(ARGV[3]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('set', KEYS[1], ARGV[1])
redis.call('set', KEYS[2], ARGV[2])
return redis.call('incr', KEYS[3])
`,
};

/**
 * Ruby's `handler_failed!`, decided like core's `decideFailure`. KEYS: exceptions, attempts, status, timeout,
 * mutex, delay. ARGV: attempts_limit, exceptions_limit, accepted (1/0), now, delay, max_delay ('' = linear).
 * Returns `{outcome, attempts, exceptions, delay_until}` (delay_until '' unless HandlerCrash).
 */
export const FAIL: ScriptDefinition = {
  numberOfKeys: 6,
  lua: `${LUA_HELPERS}
local exceptions = redis.call('incr', KEYS[1])
local attempts = to_i(redis.call('get', KEYS[2]))
local outcome = 'HandlerCrash'
if attempts >= tonumber(ARGV[1]) then
  outcome = 'AttemptsLimitReached'
elseif exceptions > tonumber(ARGV[2]) then
  outcome = 'ExceptionsLimitReached'
elseif ARGV[3] ~= '1' then
  outcome = 'ExceptionNotAccepted'
end
if outcome ~= 'HandlerCrash' then
  redis.call('mset', KEYS[3], 'completed', KEYS[4], '0')
  return {outcome, attempts, exceptions, ''}
end
local wait = tonumber(ARGV[5])
if ARGV[6] ~= '' then
  wait = math.min(wait * 2 ^ attempts, tonumber(ARGV[6]))
end
local delay_until = num(tonumber(ARGV[4]) + wait)
redis.call('del', KEYS[5])
redis.call('set', KEYS[4], '0')
redis.call('set', KEYS[6], delay_until)
return {outcome, attempts, exceptions, delay_until}
`,
};

/**
 * Ruby's store part of `ack!`. KEYS: the 8 keys in KEY_SUFFIXES order (status, ack_count, ...). ARGV:
 * redundant (1/0), status_key_expiry_interval. Redundant messages count the ack and stop below 2 (">= 2
 * because increments are retried and the counter could exceed two"). Then all keys are deleted, or with an
 * interval all but status, which gets that TTL. Returns 1 when the keys were deleted, else 0.
 */
export const ACKNOWLEDGED: ScriptDefinition = {
  numberOfKeys: 8,
  lua: `
if ARGV[1] == '1' and redis.call('incr', KEYS[2]) < 2 then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('del', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
  redis.call('expire', KEYS[1], ARGV[2])
else
  redis.call('del', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
end
return 1
`,
};

/** The scripts as registered with ioredis `defineCommand` (EVALSHA, EVAL on first use per connection). */
export const SCRIPTS = {
  beetleClaim: CLAIM,
  beetleAcquire: ACQUIRE,
  beetleFail: FAIL,
  beetleAcknowledged: ACKNOWLEDGED,
} as const;

export type ScriptName = keyof typeof SCRIPTS;

/** The commands `defineCommand` adds to a client: keys first, then arguments. */
export type ScriptCommands = {
  [name in ScriptName]: (...keysAndArgs: (string | number)[]) => Promise<unknown>;
};
