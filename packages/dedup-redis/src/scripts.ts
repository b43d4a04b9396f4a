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
 * The first lines of the scripts whose effect must not repeat when the call is resent (see
 * `RedisConnection.run`: a call whose reply was lost, to a connection reset or a master switch, is sent
 * again, though Redis may have run it). ARGV is:
 *
 * 1. the reply key of the call (`beetle:reply:<store>:<n>`, generated once per call, the same for each
 *    resend), or '' for a call that is harmless to repeat;
 * 2. how many seconds the reply is kept (a bit more than the caller keeps resending: its failover timeout),
 *    negative for a resend (a first send cannot find a stored reply: no lookup);
 * 3. the script's own arguments (`own` of them; `arg(i)` is the i-th);
 * 4. last, reply keys of earlier calls of the same client whose replies have arrived: deleted now rather
 *    than expiring, without a round trip of their own.
 *
 * When a resend finds its reply key, the call ran already: its stored reply is returned and nothing is done
 * again. Otherwise the script acts and `reply(value)` stores its reply under the key. A script's effects are
 * replicated as one unit, so after a master switch the new master has both the effects and the stored
 * reply, or neither (and then the resend acts anew). The reply keys are outside the `msgid:` namespace:
 * neither Ruby nor Beetle's garbage collectors look at them. Few arguments on purpose: each costs the client
 * about a microsecond.
 */
const luaReply = (own: string): string => `
local reply_key, reply_ttl = ARGV[1], ARGV[2]
local resend = string.sub(reply_ttl, 1, 1) == '-'
if resend then
  reply_ttl = string.sub(reply_ttl, 2)
  if reply_key ~= '' then
    local stored = redis.call('get', reply_key)
    if stored then return cjson.decode(stored) end
  end
end
local function arg(i) return ARGV[2 + i] end
local forgotten = 3 + (${own})
if #ARGV >= forgotten then redis.call('del', unpack(ARGV, forgotten)) end
local function reply(value)
  if reply_key ~= '' then redis.call('set', reply_key, cjson.encode(value), 'EX', reply_ttl) end
  return value
end
`;

/**
 * Redis' clock, for decisions that consumers with different clocks must agree on (handler timeout, retry
 * delay, mutex age): `TIME` is read at most once per call. Allowed before writes: since Redis 5 scripts
 * replicate their effects, not the script (the only mode in Redis 7).
 */
const LUA_CLOCK = `
local now_cache
local function redis_now()
  if not now_cache then now_cache = tonumber(redis.call('time')[1]) end
  return now_cache
end
`;

/**
 * First sighting or state, for one or more messages at once (claims made in the same tick share a call).
 * KEYS: the message ids. ARGV: the reply key and TTL (see luaReply), then expires_at and timeout_at of each
 * message, in KEYS order; a timeout_at `+<seconds>` means Redis' now + seconds. Returns one entry per
 * message: `{1, attempts}` when MSETNX succeeded (and attempts was incremented), else
 * `{0, status, delay, timeout, attempts, exceptions}` (Ruby's MGET, nil for missing keys) with Redis' now
 * appended when the timeout was given relative, or `{-1, error}` when that message's INCR failed (a
 * non-integer `attempts` left by someone else): the other messages of the call are not affected.
 */
export const CLAIM: ScriptDefinition = {
  numberOfKeys: -1,
  lua: `${LUA_HELPERS}${luaReply('2 * #KEYS')}${LUA_CLOCK}
local out = {}
for i = 1, #KEYS do
  local p = KEYS[i]
  local status, expires, timeout, attempts = p .. ':status', p .. ':expires', p .. ':timeout', p .. ':attempts'
  local timeout_at = arg(2 * i)
  local relative = string.sub(timeout_at, 1, 1) == '+'
  if relative then timeout_at = num(redis_now() + tonumber(string.sub(timeout_at, 2))) end
  if redis.call('msetnx', status, 'incomplete', expires, arg(2 * i - 1), timeout, timeout_at) == 1 then
    local count = redis.pcall('incr', attempts)
    if type(count) == 'table' then
      out[i] = {-1, count.err}
    else
      out[i] = {1, count}
    end
  else
    local state = redis.call('mget', status, p .. ':delay', timeout, attempts, p .. ':exceptions')
    out[i] = {0, state[1], state[2], state[3], state[4], state[5]}
    if relative then out[i][7] = redis_now() end
  end
end
return reply(out)
`,
};

/**
 * Mutex for a retry. KEYS: the message id. ARGV: the reply key and TTL, then now, timeout_at, stale_after; a
 * timeout_at `+<seconds>` means: decide with Redis' clock (now = Redis' now, timeout_at = now + seconds). A
 * held mutex younger than stale_after is refused (and, unlike Ruby, left in place: reference §10 weak spot
 * 6); a free or stale one is taken (`mutex=now`), then `timeout=timeout_at` and `INCR attempts`. Returns the
 * attempts, or 0 when refused.
 */
export const ACQUIRE: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}${luaReply('3')}${LUA_CLOCK}
local now, timeout_at = tonumber(arg(1)), arg(2)
if string.sub(timeout_at, 1, 1) == '+' then
  now = redis_now()
  timeout_at = num(now + tonumber(string.sub(timeout_at, 2)))
end
local mutex = p .. ':mutex'
local held = redis.call('get', mutex)
if held and to_i(held) + tonumber(arg(3)) >= now then
  return reply(0)
end
redis.call('set', mutex, num(now))
redis.call('set', p .. ':timeout', timeout_at)
return reply(redis.call('incr', p .. ':attempts'))
`,
};

/**
 * Ruby's `handler_failed!`, decided like core's `decideFailure`. KEYS: the message id. ARGV: the reply key and
 * TTL, then attempts_limit, exceptions_limit, accepted (1/0), now ('' = Redis' now), delay, max_delay
 * ('' = linear), expires_at ('' = not written; else written with a final outcome's completion). Returns
 * `{outcome, attempts, exceptions, delay_until}` (delay_until '' unless HandlerCrash).
 */
export const FAIL: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}${luaReply('7')}${LUA_CLOCK}
local timeout = p .. ':timeout'
local exceptions_count = redis.call('incr', p .. ':exceptions')
local attempts_count = to_i(redis.call('get', p .. ':attempts'))
local outcome = 'HandlerCrash'
if attempts_count >= tonumber(arg(1)) then
  outcome = 'AttemptsLimitReached'
elseif exceptions_count > tonumber(arg(2)) then
  outcome = 'ExceptionsLimitReached'
elseif arg(3) ~= '1' then
  outcome = 'ExceptionNotAccepted'
end
if outcome ~= 'HandlerCrash' then
  if arg(7) ~= '' then
    redis.call('mset', p .. ':status', 'completed', timeout, '0', p .. ':expires', arg(7))
  else
    redis.call('mset', p .. ':status', 'completed', timeout, '0')
  end
  return reply({outcome, attempts_count, exceptions_count, ''})
end
local wait = tonumber(arg(5))
if arg(6) ~= '' then
  wait = math.min(wait * 2 ^ attempts_count, tonumber(arg(6)))
end
local now = arg(4) == '' and redis_now() or tonumber(arg(4))
local delay_until = num(now + wait)
redis.call('del', p .. ':mutex')
redis.call('set', timeout, '0')
redis.call('set', p .. ':delay', delay_until)
return reply({outcome, attempts_count, exceptions_count, delay_until})
`,
};

/**
 * The end of a message's keys once its last ack is counted (Ruby's `del_keys`), as a Lua function of the
 * scripts that call it: `forget(p, interval, completed_ttl)`.
 *
 * - Both 0: DEL all 8 keys (in KEY_SUFFIXES order), Ruby's default.
 * - Only `interval` (Ruby's `redis_status_key_expiry_interval`): DEL the 7 others, EXPIRE status interval,
 *   Ruby's commands.
 * - `completed_ttl` > 0 (the tombstone): DEL the 6 others, `status` (completed) and `expires` kept with a
 *   TTL of `completed_ttl`, at most until the message's `expires` + 60 s (Redis' clock; the minute covers
 *   consumers whose clocks are behind: past `expires_at` every consumer drops a copy as Ancient), at least
 *   `interval`. A copy that comes back meanwhile, from a broker that forgot an ack or with an ack lost in a
 *   channel buffer, finds `status=completed`: acked as a duplicate, by Ruby consumers too (their MSETNX
 *   fails, their MGET reads `completed`). `expires` stays so that the garbage collector and the key tools
 *   see the tombstone as a message (and a stray `ack_count` a Ruby consumer adds is not an orphan while
 *   it lives). When the TTL comes out at 0 or less (a message long expired) every key is deleted.
 *
 * A message without a `timeout` key was cleaned up already (every claim writes one, and every cleanup
 * deletes it): nothing is done, so a resend, or a copy acked against a tombstone, neither counts nor
 * extends anything.
 */
const LUA_FORGET = `
local function forget(p, interval, completed_ttl)
  local ttl = interval
  if completed_ttl > 0 then
    local kept = completed_ttl
    local expires = redis.call('get', p .. ':expires')
    if expires then kept = math.min(kept, to_i(expires) + 60 - redis_now()) end
    ttl = math.max(ttl, kept)
  end
  if ttl <= 0 then
    redis.call('del', p .. ':status', p .. ':ack_count', p .. ':timeout', p .. ':delay', p .. ':attempts',
      p .. ':exceptions', p .. ':mutex', p .. ':expires')
  elseif completed_ttl > 0 then
    redis.call('del', p .. ':ack_count', p .. ':timeout', p .. ':delay', p .. ':attempts', p .. ':exceptions',
      p .. ':mutex')
    redis.call('expire', p .. ':status', num(ttl))
    redis.call('expire', p .. ':expires', num(ttl))
  else
    redis.call('del', p .. ':ack_count', p .. ':timeout', p .. ':delay', p .. ':attempts', p .. ':exceptions',
      p .. ':mutex', p .. ':expires')
    redis.call('expire', p .. ':status', num(ttl))
  end
end
`;

/**
 * Ruby's store part of `ack!`. KEYS: the message id. ARGV: the reply key and TTL, then redundant (1/0),
 * status_key_expiry_interval, acks (how many acks to count: 1, Ruby's `INCR`, or 2 with `INCRBY` when one
 * subscriber acked both copies), completed_ttl. A message without `timeout` was cleaned up already (see
 * LUA_FORGET): nothing to count, so a copy acked against a tombstone does not recreate `ack_count`.
 * Redundant messages count the acks and stop below 2 (">= 2 because increments are retried and the counter
 * could exceed two"). Then the keys go (`forget`). Returns 1 when the keys were cleaned up, else 0.
 *
 * Resends: a count that stopped below 2 stores its reply (resent, it would count again: one ack of a
 * redundant message would delete the keys, and the other copy would run again). A count that cleaned up
 * stores none, on the hot path of every redundant message: its resend finds no `timeout` key and answers 1
 * without counting.
 */
export const ACKNOWLEDGED: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}${luaReply('4')}${LUA_CLOCK}${LUA_FORGET}
if redis.call('exists', p .. ':timeout') == 0 then
  return 1
end
if arg(1) == '1' then
  local acks = tonumber(arg(3))
  local count = acks == 1 and redis.call('incr', p .. ':ack_count') or redis.call('incrby', p .. ':ack_count', acks)
  if count < 2 then
    return reply(0)
  end
end
forget(p, tonumber(arg(2)), tonumber(arg(4)))
return 1
`,
};

/**
 * The cleanup of several messages whose last ack is in (non-redundant ones, and redundant ones whose two acks
 * one subscriber recorded at once), in one call: `forget` for each. KEYS: the message ids. ARGV:
 * status_key_expiry_interval, completed_ttl. No stored reply: a resend finds the cleaned-up messages without
 * `timeout` and leaves them alone. (Without interval and completed_ttl a plain DEL does this job.)
 */
export const FORGET: ScriptDefinition = {
  numberOfKeys: -1,
  lua: `${LUA_HELPERS}${LUA_CLOCK}${LUA_FORGET}
local interval, completed_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('exists', KEYS[i] .. ':timeout') == 1 then forget(KEYS[i], interval, completed_ttl) end
end
return #KEYS
`,
};

/**
 * Ruby's `setnx_completed!` (the simple path with a status-key expiry): `SET status completed EX interval NX`.
 * KEYS: the message id. ARGV: the reply key and TTL, then the interval. Returns 1 when set (the handler may
 * run), 0 when the status existed. A script only for its stored reply: a resent plain SET would find its own
 * key and answer nil, and the message, already acked, would never be handled.
 */
export const MARK_COMPLETED: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_KEYS}${luaReply('1')}
if redis.call('set', p .. ':status', 'completed', 'EX', arg(1), 'NX') then
  return reply(1)
end
return reply(0)
`,
};

/**
 * Gives back a run abandoned without a result (see `DedupStore.release`). KEYS: the message id. ARGV: the
 * reply key and TTL, then the run's attempt number. Only while the message is incomplete and `attempts` is
 * still the run's (nobody took over): `DECR attempts`, `timeout=0`, `DEL mutex`. Returns 1 when released,
 * else 0.
 */
export const RELEASE: ScriptDefinition = {
  numberOfKeys: 1,
  lua: `${LUA_HELPERS}${LUA_KEYS}${luaReply('1')}
local attempts = p .. ':attempts'
local state = redis.call('mget', p .. ':status', attempts)
if state[1] ~= 'incomplete' or to_i(state[2]) ~= tonumber(arg(1)) then
  return reply(0)
end
redis.call('decr', attempts)
redis.call('set', p .. ':timeout', '0')
redis.call('del', p .. ':mutex')
return reply(1)
`,
};

/** The scripts as registered with ioredis `defineCommand` (EVALSHA, EVAL on first use per connection). */
export const SCRIPTS = {
  beetleClaim: CLAIM,
  beetleAcquire: ACQUIRE,
  beetleFail: FAIL,
  beetleAcknowledged: ACKNOWLEDGED,
  beetleForget: FORGET,
  beetleMarkCompleted: MARK_COMPLETED,
  beetleRelease: RELEASE,
} as const;

export type ScriptName = keyof typeof SCRIPTS;

/**
 * The commands `defineCommand` adds to a client: the message id (KEYS[1]) first, then arguments (the claim
 * script: the number of message ids first, then the ids).
 */
export type ScriptCommands = {
  [name in ScriptName]: (...keysAndArgs: (string | number)[]) => Promise<unknown>;
};
