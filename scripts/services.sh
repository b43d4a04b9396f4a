#!/usr/bin/env bash
# Real services for Beetle development, tests and CI (no Docker needed).
#
#   scripts/services.sh up|down|status [--third-broker] [--sentinels]
#   scripts/services.sh start-broker <amqpPort> [name] [--tls <port> <certDir> [--verify-peer]]
#   scripts/services.sh stop-broker <amqpPort> | pid-broker <amqpPort>
#   scripts/services.sh start-redis <port> [--replicaof host:port] [--tls <port> <certDir>]
#   scripts/services.sh stop-redis <port> | pid-redis <port>
#   scripts/services.sh start-sentinel <port> <masterHost:port> [--name <master>] [--down-after <ms>]
#   scripts/services.sh stop-sentinel <port> | pid-sentinel <port>
#   scripts/services.sh down --purge      # also delete the state directory
#
# `up` provides RabbitMQ on 5672 and 5673 (optionally 5674 with --third-broker
# or BEETLE_THIRD_BROKER=1), each with its management API on "1"+port, and
# Redis on 6379 with a replica on 6380. Services already running are reused.
# `--sentinels` (or BEETLE_SENTINELS=1) adds three Redis Sentinels on
# 26379-26381 watching that pair as `mymaster` (quorum 2): the dedup store
# then follows failovers with redisServer
# sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster.
#
# Conventions for every broker this script starts: node <name>@localhost,
# management port "1"+amqpPort, Erlang distribution port amqpPort+20000.
# Everything binds to 127.0.0.1 only. `--tls <port> <certDir>` adds an amqps
# listener on that port with certDir/ca.pem, server-cert.pem and
# server-key.pem; `--verify-peer` makes it require a client certificate
# signed by that CA (verify_peer + fail_if_no_peer_cert). For Redis, `--tls`
# adds a TLS port next to the plain one (clients need no certificate).
#
# State lives in $BEETLE_SERVICES_DIR (default /tmp/beetle-services), one
# directory per instance (broker-<port>, redis-<port>). That directory is the
# record of what this script started: `down`/`stop-*` only ever act on
# processes that carry its marker, so the machine's own broker on 5672 and
# Redis on 6379 are never stopped.
set -euo pipefail

STATE_DIR=${BEETLE_SERVICES_DIR:-/tmp/beetle-services}
WAIT_SECS=${BEETLE_SERVICES_TIMEOUT:-120}
HOST=127.0.0.1

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- probes ---

# True if something listens on the port (any address), so we never start a
# second service on a port someone else owns.
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
  fi
}

# Speaks AMQP: send the 0-9-1 protocol header, expect a method frame (type 1,
# connection.start). A paused or booting broker fails this, unlike a bare
# TCP connect.
amqp_answers() {
  local first
  # shellcheck disable=SC2016 # $1 expands in the inner shell
  first=$(timeout 3 bash -c \
    'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "AMQP\000\000\011\001" >&3 && head -c 1 <&3' \
    _ "$1" 2>/dev/null | od -An -tu1 | tr -d ' \n') || return 1
  [ "$first" = 1 ]
}

mgmt_port() { printf '1%s' "$1"; }

mgmt_answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 -u guest:guest \
    "http://$HOST:$(mgmt_port "$1")/api/overview" 2>/dev/null) || true
  [ "$code" = 200 ]
}

redis_answers() {
  [ "$(timeout 3 redis-cli -h "$HOST" -p "$1" ping 2>/dev/null)" = PONG ]
}

redis_link_up() {
  timeout 3 redis-cli -h "$HOST" -p "$1" info replication 2>/dev/null |
    tr -d '\r' | grep -qx 'master_link_status:up'
}

# Alive and not a zombie (orphans may linger unreaped). A killed
# multi-threaded process (beam) shows its leader as Z while other threads
# still exit and hold the sockets, so a Z with >1 task counts as alive.
pid_alive() {
  local state tasks=()
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] || return 1
  [ "$state" != Z ] && return 0
  tasks=("/proc/$1/task"/*)
  [ "${#tasks[@]}" -gt 1 ]
}

ports_closed() {
  local p
  for p in "$@"; do port_in_use "$p" && return 1; done
  return 0
}

# Every process we start runs inside its instance dir and carries
# BEETLE_SERVICE_INSTANCE=<dir> in its environment (redis overwrites its
# environ with its process title, hence the cwd check); this guards against
# stale pid files and pid reuse.
pid_is_ours() {
  pid_alive "$1" || return 1
  case "$(readlink "/proc/$1/cwd" 2>/dev/null)" in
    "$2" | "$2"/*) return 0 ;;
  esac
  tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF "BEETLE_SERVICE_INSTANCE=$2"
}

# The pid in DIR/FILE when that process is the one this script started there.
our_pid() {
  local pid
  pid=$(cat "$1/$2" 2>/dev/null) || return 1
  pid_is_ours "$pid" "$1" && echo "$pid"
}

# Waits up to 10 s for PID to exit after a stop request, then kills it.
await_exit_or_kill() {
  local pid=$1 i
  for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.2; done
  if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
}

# For a subshell about to exec a service: drop every inherited fd above 2
# (lock fd, pipes of whoever called us), so the service holds none of them.
close_inherited_fds() {
  local path fd
  for path in /proc/"$BASHPID"/fd/*; do
    fd=${path##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  return 0
}

# Wait until "$@" succeeds; $1 is a description used in the error.
wait_for() {
  local what=$1 deadline=$((SECONDS + WAIT_SECS))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || { log "timed out after ${WAIT_SECS}s waiting for $what"; return 1; }
    sleep 0.3
  done
}

valid_port() {
  if ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1024 ] || [ "$1" -gt 65535 ]; then
    die "invalid port: '$1'"
  fi
}

# Serialise work on one instance across concurrent invocations (e.g. parallel
# test files). The services themselves close fd 9 (close_inherited_fds),
# otherwise a running service would hold the lock forever.
with_lock() {
  local name=$1
  shift
  mkdir -p "$STATE_DIR"
  (
    flock -w "$((WAIT_SECS + 60))" 9 || die "could not lock $STATE_DIR/$name.lock"
    "$@"
  ) 9>"$STATE_DIR/$name.lock"
}

# -------------------------------------------------------------- packages ---

ensure_packages() {
  local pkgs=()
  command -v rabbitmq-server >/dev/null 2>&1 || pkgs+=(rabbitmq-server)
  { command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}; install them or run as root"
  log "installing ${pkgs[*]} with apt-get"
  # Keep the packages' init scripts from starting default services bound to
  # all interfaces; we start our own, loopback-only instances below.
  local policy=/usr/sbin/policy-rc.d created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  local rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >&2 || rc=$?
  [ -n "$created_policy" ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install ${pkgs[*]} failed"
}

# ------------------------------------------------------------- rabbitmq ---

# Real scripts behind the Debian wrappers: the wrappers `su rabbitmq`, which
# would need our state dirs to be owned by rabbitmq and drop our environment.
rmq_bin() {
  if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    echo /usr/lib/rabbitmq/bin
  else
    dirname "$(readlink -f "$(command -v rabbitmq-server)")"
  fi
}

broker_dir() { echo "$STATE_DIR/broker-$1"; }

default_node_name() {
  case $1 in
    5673) echo rabbit2 ;;
    5674) echo rabbit3 ;;
    *) echo "rabbit$1" ;;
  esac
}

broker_node() { cat "$(broker_dir "$1")/node" 2>/dev/null; }

broker_pid() { our_pid "$(broker_dir "$1")" rabbit.pid; }

broker_running() { broker_pid "$1" >/dev/null; }

# Run a CLI tool (rabbitmqctl, rabbitmq-diagnostics, ...) against our node.
broker_cli() {
  local port=$1 tool=$2 dir
  shift 2
  dir=$(broker_dir "$port")
  HOME="$dir/home" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    timeout 60 "$(rmq_bin)/$tool" -n "$(broker_node "$port")" "$@"
}

# Start a broker we own; returns once launched (see wait_broker).
launch_broker() {
  local port=$1 name=${2:-} tls_port=${3:-} tls_dir=${4:-} verify_peer=${5:-} dir mport dport node
  dir=$(broker_dir "$port")
  if broker_running "$port"; then
    return 0
  fi
  mport=$(mgmt_port "$port")
  dport=$((port + 20000))
  [ "$mport" -le 65535 ] || die "broker port $port: management port $mport is out of range"
  local p
  for p in "$port" "$mport" "$dport" $tls_port; do
    port_in_use "$p" && die "cannot start broker on $port: port $p is in use by a process this script did not start"
  done

  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  if [ -n "$name" ]; then
    echo "$name@localhost" >"$dir/node"
  elif [ ! -s "$dir/node" ]; then
    echo "$(default_node_name "$port")@localhost" >"$dir/node"
  fi
  node=$(broker_node "$port")

  # Same cookie as the machine's node, so its rabbitmqctl works for ours too.
  if [ ! -s "$dir/home/.erlang.cookie" ]; then
    if [ -r /var/lib/rabbitmq/.erlang.cookie ]; then
      cp /var/lib/rabbitmq/.erlang.cookie "$dir/home/.erlang.cookie"
    else
      head -c 32 /dev/urandom | od -An -tx1 | tr -dc 'A-Z0-9a-f' | head -c 20 >"$dir/home/.erlang.cookie"
    fi
    chmod 400 "$dir/home/.erlang.cookie"
  fi

  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = $HOST:$port
management.tcp.ip = $HOST
management.tcp.port = $mport
EOF
  rm -f "$dir/tls_port"
  if [ -n "$tls_port" ]; then
    local f
    for f in ca.pem server-cert.pem server-key.pem; do
      [ -r "$tls_dir/$f" ] || die "--tls: $tls_dir/$f is missing"
    done
    cat >>"$dir/rabbitmq.conf" <<EOF
listeners.ssl.default = $HOST:$tls_port
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/server-cert.pem
ssl_options.keyfile = $tls_dir/server-key.pem
ssl_options.verify = $([ -n "$verify_peer" ] && echo verify_peer || echo verify_none)
ssl_options.fail_if_no_peer_cert = $([ -n "$verify_peer" ] && echo true || echo false)
EOF
    echo "$tls_port" >"$dir/tls_port"
  fi
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  # Our own (empty) env file, so /etc/rabbitmq/rabbitmq-env.conf (NODENAME
  # of the machine's node) is not applied to this node.
  : >"$dir/rabbitmq-env.conf"
  rm -f "$dir/rabbit.pid"
  touch "$dir/fresh" # wait_broker runs the slower CLI check once per launch

  log "starting rabbitmq $node on $HOST:$port (management $mport, dist $dport)"
  # setsid: own session, so Ctrl-C in a test runner does not kill the node.
  (
    cd "$dir"
    close_inherited_fds
    exec setsid env \
      BEETLE_SERVICE_INSTANCE="$dir" \
      HOME="$dir/home" \
      RABBITMQ_NODENAME="$node" \
      RABBITMQ_NODE_IP_ADDRESS="$HOST" \
      RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT="$dport" \
      RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$dir/rabbit.pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      "$(rmq_bin)/rabbitmq-server" </dev/null >>"$dir/stdout.log" 2>&1
  ) &
  echo $! >"$dir/launcher.pid"
}

broker_ready() {
  local port=$1 dir launcher
  dir=$(broker_dir "$port")
  if [ -d "$dir" ] && [ -s "$dir/launcher.pid" ] && ! broker_running "$port"; then
    launcher=$(cat "$dir/launcher.pid")
    # Launcher gone before the node came up: it failed; stop waiting.
    pid_alive "$launcher" || return 2
  fi
  amqp_answers "$port" && mgmt_answers "$port" || return 1
  # The amqps listener, if any, is up too.
  [ ! -s "$dir/tls_port" ] || port_in_use "$(cat "$dir/tls_port")"
}

broker_failure() {
  local port=$1 dir
  dir=$(broker_dir "$port")
  log "rabbitmq on $HOST:$port ($(broker_node "$port" || echo '?')) failed to start; see $dir"
  [ -f "$dir/stdout.log" ] && tail -n 20 "$dir/stdout.log" >&2
  local f
  for f in "$dir"/log/*.log; do
    [ -f "$f" ] && { log "--- $f"; tail -n 20 "$f" >&2; }
  done
  die "rabbitmq on $HOST:$port is not available"
}

# Wait for a broker we started: AMQP + management API + the node's own
# listener check through its CLI.
wait_broker() {
  local port=$1 deadline=$((SECONDS + WAIT_SECS)) rc
  while true; do
    rc=0
    broker_ready "$port" || rc=$?
    [ "$rc" = 0 ] && break
    [ "$rc" = 2 ] && broker_failure "$port"
    [ "$SECONDS" -lt "$deadline" ] || { log "timed out after ${WAIT_SECS}s"; broker_failure "$port"; }
    sleep 0.3
  done
  local dir
  dir=$(broker_dir "$port")
  if [ -f "$dir/fresh" ] && broker_running "$port"; then
    broker_cli "$port" rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 ||
      broker_failure "$port"
    rm -f "$dir/fresh"
  fi
}

start_broker() {
  launch_broker "$@"
  wait_broker "$1"
  log "rabbitmq on $HOST:$1 is up ($(broker_node "$1"), pid $(broker_pid "$1"))"
}

stop_broker() {
  local port=$1 dir pid launcher i stopped=
  dir=$(broker_dir "$port")
  if [ ! -d "$dir" ]; then
    log "no broker on $port was started by this script; nothing to stop"
    return 0
  fi
  broker_running "$port" || log "broker on $port (started by this script) is not running"
  launcher=$(cat "$dir/launcher.pid" 2>/dev/null || true)
  if pid=$(broker_pid "$port"); then
    stopped=1
    log "stopping rabbitmq $(broker_node "$port") on $HOST:$port (pid $pid)"
    kill -CONT "$pid" 2>/dev/null || true # in case a test paused it
    broker_cli "$port" rabbitmqctl -q stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.3; done
    if pid_alive "$pid"; then
      log "rabbitmq on $port did not stop in time; killing pid $pid"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # The launcher shell exits with the node; only kill it if it is ours.
  if [ -n "$launcher" ] && pid_is_ours "$launcher" "$dir"; then
    kill -TERM "$launcher" 2>/dev/null || true
  fi
  # So that an immediate start-broker finds the ports free.
  if [ -n "$stopped" ]; then
    wait_for "ports of the stopped broker on $port to close" \
      ports_closed "$port" "$(mgmt_port "$port")" "$((port + 20000))" || true
  fi
  rm -f "$dir/rabbit.pid" "$dir/launcher.pid"
}

# The machine's own node (Debian package, rabbit@localhost) without the
# management plugin: enable it, bound to loopback.
enable_system_management() {
  local conf=/etc/rabbitmq/rabbitmq.conf
  log "enabling rabbitmq_management on the machine's broker (5672)"
  command -v rabbitmq-plugins >/dev/null || die "rabbitmq-plugins not found"
  # Persist the loopback listener for future boots of that node ...
  if [ -w "$conf" ] && ! grep -q '^[[:space:]]*management\.tcp\.' "$conf"; then
    printf '%s\n' '# added by beetle scripts/services.sh: management API on loopback only' \
      "management.tcp.ip = $HOST" 'management.tcp.port = 15672' >>"$conf"
  fi
  # ... and set it in the running node: it does not re-read rabbitmq.conf when
  # a plugin is enabled at runtime and would otherwise listen on 0.0.0.0.
  timeout 60 rabbitmqctl -q eval \
    "application:set_env(rabbitmq_management, tcp_config, [{ip, \"$HOST\"}, {port, 15672}], [{persistent, true}])." \
    >/dev/null || log "warning: could not set the management listener on the running node"
  timeout 120 rabbitmq-plugins -q enable rabbitmq_management >&2 ||
    die "rabbitmq-plugins enable rabbitmq_management failed for the broker on $HOST:5672"
  wait_for "management API of the broker on $HOST:5672 (http://$HOST:15672)" mgmt_answers 5672 ||
    die "management API of the broker on $HOST:5672 does not answer on 15672"
  if ss -Hltn 'sport = :15672' 2>/dev/null | awk '{print $4}' | grep -qv '^127\.0\.0\.1:'; then
    log "warning: the management listener on 15672 is not loopback-only: $(ss -Hltn 'sport = :15672' | awk '{print $4}' | tr '\n' ' ')"
  fi
}

# Make sure a broker answers on the port: ours, reused, or newly launched.
ensure_broker() {
  local port=$1
  if broker_running "$port"; then
    return 0
  fi
  if amqp_answers "$port"; then
    mgmt_answers "$port" && return 0
    if [ "$port" = 5672 ]; then
      enable_system_management
      return 0
    fi
    die "broker on $HOST:$port was not started by this script and its management API (port $(mgmt_port "$port")) does not answer"
  fi
  launch_broker "$port"
}

# ---------------------------------------------------------------- redis ---

redis_dir() { echo "$STATE_DIR/redis-$1"; }

redis_pid() { our_pid "$(redis_dir "$1")" redis.pid; }

redis_running() { redis_pid "$1" >/dev/null; }

launch_redis() {
  local port=$1 replicaof=${2:-} tls_port=${3:-} tls_dir=${4:-} dir
  dir=$(redis_dir "$port")
  redis_running "$port" && return 0
  local p
  for p in "$port" $tls_port; do
    port_in_use "$p" && die "cannot start redis on $port: port $p is in use by a process this script did not start"
  done
  mkdir -p "$dir/data"
  rm -f "$dir/redis.pid"
  local args=(--daemonize yes --bind "$HOST" --port "$port" --save '' --appendonly no
    --dir "$dir/data" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
    --repl-diskless-sync-delay 0)
  if [ -n "$replicaof" ]; then
    [[ "$replicaof" =~ ^[^:]+:[0-9]+$ ]] || die "--replicaof expects host:port, got '$replicaof'"
    args+=(--replicaof "${replicaof%:*}" "${replicaof##*:}")
  fi
  if [ -n "$tls_port" ]; then
    local f
    for f in ca.pem server-cert.pem server-key.pem; do
      [ -r "$tls_dir/$f" ] || die "--tls: $tls_dir/$f is missing"
    done
    args+=(--tls-port "$tls_port" --tls-cert-file "$tls_dir/server-cert.pem"
      --tls-key-file "$tls_dir/server-key.pem" --tls-ca-cert-file "$tls_dir/ca.pem" --tls-auth-clients no)
  fi
  log "starting redis on $HOST:$port${replicaof:+ (replica of $replicaof)}"
  (
    cd "$dir/data"
    close_inherited_fds
    BEETLE_SERVICE_INSTANCE="$dir" exec redis-server "${args[@]}" </dev/null >>"$dir/stdout.log" 2>&1
  ) ||
    { tail -n 20 "$dir/stdout.log" "$dir/redis.log" >&2 2>/dev/null; die "redis on $HOST:$port failed to start"; }
}

wait_redis() {
  local port=$1 replica=${2:-}
  wait_for "redis on $HOST:$port" redis_answers "$port" ||
    { tail -n 20 "$(redis_dir "$port")/redis.log" >&2 2>/dev/null; die "redis on $HOST:$port does not answer PING"; }
  if [ -n "$replica" ]; then
    wait_for "redis replica on $HOST:$port to sync with its master" redis_link_up "$port" ||
      die "redis replica on $HOST:$port: master_link_status is not up"
  fi
}

start_redis() {
  launch_redis "$@"
  wait_redis "$1" "${2:-}"
  log "redis on $HOST:$1 is up (pid $(redis_pid "$1"))"
}

stop_redis() {
  local port=$1 dir pid
  dir=$(redis_dir "$port")
  if ! pid=$(redis_pid "$port"); then
    log "no running redis on $port was started by this script; nothing to stop"
    return 0
  fi
  log "stopping redis on $HOST:$port (pid $pid)"
  kill -CONT "$pid" 2>/dev/null || true
  timeout 10 redis-cli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  await_exit_or_kill "$pid"
  wait_for "port of the stopped redis on $port to close" ports_closed "$port" || true
  rm -f "$dir/redis.pid"
}

ensure_redis() {
  local port=$1 replicaof=${2:-}
  redis_running "$port" && return 0
  redis_answers "$port" && return 0 # someone else's, e.g. the machine's 6379
  launch_redis "$port" "$replicaof"
}

# ------------------------------------------------------------ sentinel ---

SENTINEL_PORTS=(26379 26380 26381)

sentinel_dir() { echo "$STATE_DIR/sentinel-$1"; }

sentinel_pid() { our_pid "$(sentinel_dir "$1")" sentinel.pid; }

sentinel_running() { sentinel_pid "$1" >/dev/null; }

# Knows a master for the name (it has finished reading its configuration).
sentinel_answers() {
  timeout 3 redis-cli -h "$HOST" -p "$1" sentinel get-master-addr-by-name "$2" 2>/dev/null | grep -q .
}

# A fresh configuration at every start: Sentinel rewrites it with what it
# learns (replicas, other Sentinels, epochs), which belongs to one group's life.
launch_sentinel() {
  local port=$1 master=$2 name=${3:-mymaster} down_after=${4:-5000} dir
  dir=$(sentinel_dir "$port")
  sentinel_running "$port" && return 0
  port_in_use "$port" && die "cannot start sentinel on $port: the port is in use by a process this script did not start"
  [[ "$master" =~ ^[^:]+:[0-9]+$ ]] || die "start-sentinel expects the master as host:port, got '$master'"
  mkdir -p "$dir"
  rm -f "$dir/sentinel.pid"
  cat >"$dir/sentinel.conf" <<CONF
port $port
bind $HOST
daemonize yes
pidfile $dir/sentinel.pid
logfile $dir/sentinel.log
dir $dir
sentinel monitor $name ${master%:*} ${master##*:} 2
sentinel down-after-milliseconds $name $down_after
sentinel failover-timeout $name $((down_after * 4 > 10000 ? down_after * 4 : 10000))
sentinel parallel-syncs $name 1
CONF
  log "starting sentinel on $HOST:$port (watching $name at $master, down after ${down_after}ms)"
  (
    cd "$dir"
    close_inherited_fds
    BEETLE_SERVICE_INSTANCE="$dir" exec redis-server "$dir/sentinel.conf" --sentinel </dev/null >>"$dir/stdout.log" 2>&1
  ) ||
    { tail -n 20 "$dir/stdout.log" "$dir/sentinel.log" >&2 2>/dev/null; die "sentinel on $HOST:$port failed to start"; }
}

start_sentinel() {
  local port=$1 name=${3:-mymaster}
  launch_sentinel "$@"
  wait_for "sentinel on $HOST:$port" sentinel_answers "$port" "$name" ||
    { tail -n 20 "$(sentinel_dir "$port")/sentinel.log" >&2 2>/dev/null; die "sentinel on $HOST:$port does not answer"; }
  log "sentinel on $HOST:$port is up (pid $(sentinel_pid "$port"))"
}

stop_sentinel() {
  local port=$1 pid
  if ! pid=$(sentinel_pid "$port"); then
    log "no running sentinel on $port was started by this script; nothing to stop"
    return 0
  fi
  log "stopping sentinel on $HOST:$port (pid $pid)"
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  await_exit_or_kill "$pid"
  wait_for "port of the stopped sentinel on $port to close" ports_closed "$port" || true
  rm -f "$(sentinel_dir "$port")/sentinel.pid"
}

# ------------------------------------------------------------- commands ---

broker_ports() {
  local ports=(5672 5673)
  [ -n "$THIRD" ] && ports+=(5674)
  echo "${ports[@]}"
}

cmd_up() {
  local start=$SECONDS port
  ensure_packages
  mkdir -p "$STATE_DIR"
  # Launch everything first, then wait, so things start in parallel: Redis
  # first (the replica's initial sync takes ~5s on a master with the default
  # repl-diskless-sync-delay), 5672 last (enabling management on the
  # machine's node blocks for seconds).
  with_lock redis-6379 ensure_redis 6379
  with_lock redis-6380 ensure_redis 6380 "$HOST:6379"
  for port in $(broker_ports | tr ' ' '\n' | sort -rn); do
    with_lock "broker-$port" ensure_broker "$port"
  done
  for port in $(broker_ports); do
    wait_broker "$port"
    log "rabbitmq $HOST:$port ok (management $(mgmt_port "$port"))"
  done
  wait_redis 6379
  log "redis $HOST:6379 ok"
  wait_redis 6380 replica
  log "redis $HOST:6380 ok (replica, link up)"
  if [ -n "$SENTINELS" ]; then
    for port in "${SENTINEL_PORTS[@]}"; do
      sentinel_running "$port" && continue
      if sentinel_answers "$port" mymaster; then continue; fi # someone else's
      with_lock "sentinel-$port" launch_sentinel "$port" "$HOST:6379" mymaster
    done
    for port in "${SENTINEL_PORTS[@]}"; do
      wait_for "sentinel on $HOST:$port" sentinel_answers "$port" mymaster || die "sentinel on $HOST:$port does not answer"
      log "sentinel $HOST:$port ok (master mymaster at $(timeout 3 redis-cli -h "$HOST" -p "$port" sentinel get-master-addr-by-name mymaster | paste -sd: -))"
    done
  fi
  log "all services up in $((SECONDS - start))s"
}

cmd_down() {
  local dir port
  shopt -s nullglob
  # Sentinels first: they would fail over a master stopped before them.
  for dir in "$STATE_DIR"/sentinel-*/; do
    dir=${dir%/}
    port=${dir##*/sentinel-}
    if sentinel_running "$port"; then with_lock "sentinel-$port" stop_sentinel "$port"; fi
  done
  # Includes disposable instances that tests left running.
  for dir in "$STATE_DIR"/broker-*/; do
    dir=${dir%/}
    port=${dir##*/broker-}
    if broker_running "$port"; then with_lock "broker-$port" stop_broker "$port"; fi
  done
  # Replicas first, so they do not log reconnect errors for a gone master.
  for dir in "$STATE_DIR"/redis-*/; do
    dir=${dir%/}
    port=${dir##*/redis-}
    [ "$port" = 6379 ] && continue
    if redis_running "$port"; then with_lock "redis-$port" stop_redis "$port"; fi
  done
  if redis_running 6379; then with_lock redis-6379 stop_redis 6379; fi
  if [ -n "$PURGE" ]; then
    log "removing $STATE_DIR"
    rm -rf "$STATE_DIR"
  fi
  log "down: stopped everything this script had started (other services untouched)"
}

cmd_status() {
  local failed=0 port owner dir
  for port in $(broker_ports); do
    owner=external
    broker_running "$port" && owner="ours, $(broker_node "$port") pid $(broker_pid "$port")"
    if amqp_answers "$port" && mgmt_answers "$port"; then
      printf '%-9s %-16s up    (amqp + management %s; %s)\n' rabbitmq "$HOST:$port" "$(mgmt_port "$port")" "$owner"
    else
      printf '%-9s %-16s DOWN  (amqp %s, management %s)\n' rabbitmq "$HOST:$port" \
        "$(amqp_answers "$port" && echo ok || echo no)" "$(mgmt_answers "$port" && echo ok || echo no)"
      failed=1
    fi
  done
  for port in 6379 6380; do
    owner=external
    redis_running "$port" && owner="ours, pid $(redis_pid "$port")"
    if redis_answers "$port" && { [ "$port" = 6379 ] || redis_link_up "$port"; }; then
      printf '%-9s %-16s up    (%s%s)\n' redis "$HOST:$port" "$owner" "$([ "$port" = 6380 ] && echo ', replica link up')"
    else
      printf '%-9s %-16s DOWN\n' redis "$HOST:$port"
      failed=1
    fi
  done
  if [ -n "$SENTINELS" ]; then
    for port in "${SENTINEL_PORTS[@]}"; do
      if sentinel_answers "$port" mymaster; then
        printf '%-9s %-16s up    (mymaster at %s)\n' sentinel "$HOST:$port" \
          "$(timeout 3 redis-cli -h "$HOST" -p "$port" sentinel get-master-addr-by-name mymaster | paste -sd: -)"
      else
        printf '%-9s %-16s DOWN\n' sentinel "$HOST:$port"
        failed=1
      fi
    done
  fi
  # Disposable instances (informational only).
  shopt -s nullglob
  for dir in "$STATE_DIR"/broker-*/ "$STATE_DIR"/redis-*/ "$STATE_DIR"/sentinel-*/; do
    dir=${dir%/}
    case ${dir##*/} in
      broker-5672 | broker-5673 | redis-6379 | redis-6380) continue ;;
      sentinel-26379 | sentinel-26380 | sentinel-26381) [ -n "$SENTINELS" ] && continue ;;
      broker-5674) [ -n "$THIRD" ] && continue ;;
    esac
    port=${dir##*-}
    case ${dir##*/} in
      broker-*) broker_running "$port" && printf '%-9s %-16s running (disposable, %s)\n' rabbitmq "$HOST:$port" "$(broker_node "$port")" ;;
      redis-*) redis_running "$port" && printf '%-9s %-16s running (disposable)\n' redis "$HOST:$port" ;;
      sentinel-*) sentinel_running "$port" && printf '%-9s %-16s running (disposable)\n' sentinel "$HOST:$port" ;;
    esac
  done
  return "$failed"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
THIRD=${BEETLE_THIRD_BROKER:-}
[ "$THIRD" = 0 ] && THIRD=
SENTINELS=${BEETLE_SENTINELS:-}
[ "$SENTINELS" = 0 ] && SENTINELS=
PURGE=
case $cmd in
  up | down | status)
    for arg in "$@"; do
      case $arg in
        --third-broker) THIRD=1 ;;
        --sentinels) SENTINELS=1 ;;
        --purge) PURGE=1 ;;
        *) usage ;;
      esac
    done
    "cmd_$cmd"
    ;;
  start-broker)
    [ $# -ge 1 ] || usage
    port=$1 name= tls_port= tls_dir= verify_peer=
    shift
    if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then name=$1; shift; fi
    while [ $# -gt 0 ]; do
      case $1 in
        --tls)
          [ $# -ge 3 ] || usage
          tls_port=$2
          tls_dir=$(cd "$3" && pwd) || die "--tls: no directory $3"
          shift 3
          ;;
        --verify-peer) verify_peer=1; shift ;;
        *) usage ;;
      esac
    done
    valid_port "$port"
    [ -z "$tls_port" ] || valid_port "$tls_port"
    [ -z "$verify_peer" ] || [ -n "$tls_port" ] || die "--verify-peer needs --tls"
    [ "$port" -le 9999 ] || die "broker port must be <= 9999 (management port is \"1\"+port)"
    ensure_packages
    with_lock "broker-$port" start_broker "$port" "$name" "$tls_port" "$tls_dir" "$verify_peer"
    ;;
  stop-broker)
    [ $# -eq 1 ] || usage
    valid_port "$1"
    with_lock "broker-$1" stop_broker "$1"
    ;;
  pid-broker)
    [ $# -eq 1 ] || usage
    broker_pid "$1" || die "no running broker on $1 started by this script"
    ;;
  start-redis)
    [ $# -ge 1 ] || usage
    port=$1 replicaof= tls_port= tls_dir=
    shift
    while [ $# -gt 0 ]; do
      case $1 in
        --replicaof)
          [ $# -ge 2 ] || usage
          replicaof=$2
          shift 2
          ;;
        --tls)
          [ $# -ge 3 ] || usage
          tls_port=$2
          tls_dir=$(cd "$3" && pwd) || die "--tls: no directory $3"
          shift 3
          ;;
        *) usage ;;
      esac
    done
    valid_port "$port"
    [ -z "$tls_port" ] || valid_port "$tls_port"
    ensure_packages
    with_lock "redis-$port" start_redis "$port" "$replicaof" "$tls_port" "$tls_dir"
    ;;
  stop-redis)
    [ $# -eq 1 ] || usage
    valid_port "$1"
    with_lock "redis-$1" stop_redis "$1"
    ;;
  pid-redis)
    [ $# -eq 1 ] || usage
    redis_pid "$1" || die "no running redis on $1 started by this script"
    ;;
  start-sentinel)
    [ $# -ge 2 ] || usage
    port=$1 master=$2 name=mymaster down_after=5000
    shift 2
    while [ $# -gt 0 ]; do
      case $1 in
        --name) [ $# -ge 2 ] || usage; name=$2; shift 2 ;;
        --down-after) [ $# -ge 2 ] || usage; down_after=$2; shift 2 ;;
        *) usage ;;
      esac
    done
    valid_port "$port"
    [[ "$down_after" =~ ^[0-9]+$ ]] || die "--down-after expects milliseconds, got '$down_after'"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name: invalid master name '$name'"
    ensure_packages
    with_lock "sentinel-$port" start_sentinel "$port" "$master" "$name" "$down_after"
    ;;
  stop-sentinel)
    [ $# -eq 1 ] || usage
    valid_port "$1"
    with_lock "sentinel-$1" stop_sentinel "$1"
    ;;
  pid-sentinel)
    [ $# -eq 1 ] || usage
    sentinel_pid "$1" || die "no running sentinel on $1 started by this script"
    ;;
  *) usage ;;
esac
