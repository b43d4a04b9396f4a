/**
 * The Lua scripts behind the store's steps, one script call (one round trip) per step (the claim script takes
 * the claims of several messages at once). Each script runs the very commands Ruby Beetle sends one by one
 * (reference §4.4, §12), atomically, on the keys Ruby uses. A script gets message ids `msgid:<queue>:<uuid>`
 * as its KEYS entries (one, except for the claim script) and builds each message's keys from its id: Redis
 * Cluster is not a target (Ruby's key schema has no hash tag, so a message's keys would not share a slot
 * anyway).
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
  /** -1: the call passes the number of keys first (a script over several messages). */
  readonly numberOfKeys: number;
  readonly lua: string;
}

/**
 * The first line of every script: `p` is the message id `msgid:<queue>:<uuid>` passed as KEYS[1], the prefix
 * of all its keys (`<p>:<suffix>`, the names Ruby uses). Building the keys in the script rather than on the
 * client keeps each call small (one id instead of up to 8 keys to concatenate, encode and send); the commands
 * the scripts run, and the keys they touch, are the same. Each script builds only the keys it uses.
 */
const LUA_KEYS = `
local p = KEYS[1]
`;

/**
 * First sighting or state, for one or more messages at once (claims made in the same tick share a call).
 * KEYS: the message ids. ARGV: expires_at and timeout_at of each message, in KEYS order. Returns one entry per
 * message: `{1, attempts}` when MSETNX succeeded (and attempts was incremented), else
 * `{0, status, delay, timeout, attempts, exceptions}` (Ruby's MGET, nil for missing keys), or `{-1, error}`
 * when that message's INCR failed (a non-integer `attempts` left by someone else): the other messages of the
 * call are not affected.
 */
export const CLAIM: ScriptDefinition = {
  numberOfKeys: -1,
  lua: `
local out = {}
for i = 1, #KEYS do
  local p = KEYS[i]
  local status, expires, timeout, attempts = p .. ':status', p .. ':expires', p .. ':timeout', p .. ':attempts'
  if redis.call('msetnx', status, 'incomplete', expires, ARGV[2 * i - 1], timeout, ARGV[2 * i]) == 1 then
    local count = redis.pcall('incr', attempts)
    if type(count) == 'table' then
      out[i] = {-1, count.err}
    else
      out[i] = {1, count}
    end
  else
    local state = redis.call('mget', status, p .. ':delay', timeout, attempts, p .. ':exceptions')
    out[i] = {0, state[1], state[2], state[3], state[4], state[5]}
  end
end
return out
`,
};

/**
 * Mutex for a retry. KEYS: the message id. ARGV: now, timeout_at, stale_after. A held mutex younger than
 * stale_after is refused (and, unlike Ruby, left in place: reference §10 weak spot 6); a free or stale one is
 * taken (`mutex=now`), then `timeout=timeout_at` and `INCR attempts`. Returns the attempts, or 0 when refused.
 */
export const ACQUIRE: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}
local mutex = p .. ':mutex'
local held = redis.call('get', mutex)
if held and to_i(held) + tonumber(ARGV[3]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('set', mutex, ARGV[1])
redis.call('set', p .. ':timeout', ARGV[2])
return redis.call('incr', p .. ':attempts')
`,
};

/**
 * Ruby's `handler_failed!`, decided like core's `decideFailure`. KEYS: the message id. ARGV: attempts_limit,
 * exceptions_limit, accepted (1/0), now, delay, max_delay ('' = linear). Returns
 * `{outcome, attempts, exceptions, delay_until}` (delay_until '' unless HandlerCrash).
 */
export const FAIL: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}
local timeout = p .. ':timeout'
local exceptions_count = redis.call('incr', p .. ':exceptions')
local attempts_count = to_i(redis.call('get', p .. ':attempts'))
local outcome = 'HandlerCrash'
if attempts_count >= tonumber(ARGV[1]) then
  outcome = 'AttemptsLimitReached'
elseif exceptions_count > tonumber(ARGV[2]) then
  outcome = 'ExceptionsLimitReached'
elseif ARGV[3] ~= '1' then
  outcome = 'ExceptionNotAccepted'
end
if outcome ~= 'HandlerCrash' then
  redis.call('mset', p .. ':status', 'completed', timeout, '0')
  return {outcome, attempts_count, exceptions_count, ''}
end
local wait = tonumber(ARGV[5])
if ARGV[6] ~= '' then
  wait = math.min(wait * 2 ^ attempts_count, tonumber(ARGV[6]))
end
local delay_until = num(tonumber(ARGV[4]) + wait)
redis.call('del', p .. ':mutex')
redis.call('set', timeout, '0')
redis.call('set', p .. ':delay', delay_until)
return {outcome, attempts_count, exceptions_count, delay_until}
`,
};

/**
 * Ruby's store part of `ack!`. KEYS: the message id. ARGV: redundant (1/0), status_key_expiry_interval, acks
 * (how many acks to count: 1, Ruby's `INCR`, or 2 with `INCRBY` when one subscriber acked both copies). Redundant messages count the
 * acks and stop below 2 (">= 2 because increments are retried and the counter could exceed two"). Then all 8 keys are deleted (in KEY_SUFFIXES order), or with an interval all but
 * status, which gets that TTL. Returns 1 when the keys were deleted, else 0.
 */
export const ACKNOWLEDGED: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_KEYS}
local status, ack_count = p .. ':status', p .. ':ack_count'
if ARGV[1] == '1' then
  local acks = tonumber(ARGV[3])
  local count = acks == 1 and redis.call('incr', ack_count) or redis.call('incrby', ack_count, acks)
  if count < 2 then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('del', ack_count, p .. ':timeout', p .. ':delay', p .. ':attempts', p .. ':exceptions',
    p .. ':mutex', p .. ':expires')
  redis.call('expire', status, ARGV[2])
else
  redis.call('del', status, ack_count, p .. ':timeout', p .. ':delay', p .. ':attempts', p .. ':exceptions',
    p .. ':mutex', p .. ':expires')
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

/** The commands `defineCommand` adds to a client: the message id (KEYS[1]) first, then arguments. */
export type ScriptCommands = {
  [name in ScriptName]: (...keysAndArgs: (string | number)[]) => Promise<unknown>;
};
