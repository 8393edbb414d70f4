#!/usr/bin/env bash
# Runs a real Apache Pulsar standalone (broker + one bookie + local metadata
# store in one JVM) on loopback, configured the way pulsar-gateway needs it.
#
#   deploy/pulsar-standalone.sh fetch                 download + unpack once (cached)
#   deploy/pulsar-standalone.sh start [options]       start, wait until ready
#   deploy/pulsar-standalone.sh stop  [--run-dir DIR] SIGTERM, then SIGKILL after a deadline
#   deploy/pulsar-standalone.sh status [--run-dir DIR] exit 0 if running, 3 if not
#
# start options:
#   --run-dir DIR             where conf, data, logs and the pid file go
#                             (default: $PULSAR_RUN_DIR, else
#                             ${TMPDIR:-/tmp}/pulsar-gateway-pulsar-$PULSAR_PORT)
#   --keep-data               reuse DIR/data instead of starting from an empty cluster
#   --token-auth              enable JWT token authentication + authorization
#                             (HS256); a secret key is generated in DIR unless
#   --token-secret-key FILE   names one (implies --token-auth). The superuser
#                             role is "admin"; its token is written to DIR/admin.token.
#   --small-ledgers           roll ledgers every 200 entries with no minimum
#                             age, so tests see roll-over and retention's
#                             ledger trimming within seconds
#   --tls                     also listen with TLS (binary protocol on
#                             PULSAR_TLS_PORT, admin API on PULSAR_WEB_TLS_PORT),
#                             with a certificate for 127.0.0.1 and localhost
#                             signed by a test CA made in DIR/tls (ca.pem)
#
# Environment:
#   PULSAR_PORT (6650)  PULSAR_WEB_PORT (8081); the bookie takes a free ephemeral port
#   PULSAR_TLS_PORT (PULSAR_PORT + 1)  PULSAR_WEB_TLS_PORT (PULSAR_WEB_PORT + 1), with --tls
#   PULSAR_VERSION (4.0.8)  PULSAR_START_TIMEOUT (120 s)  PULSAR_STOP_TIMEOUT (30 s)
#   PULSAR_CACHE_DIR (${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway/pulsar)
#   PULSAR_MEM, PULSAR_GC  JVM memory and GC flags (small defaults for 2 cores)
#
# After a successful start, DIR/pulsar.env holds PULSAR_SERVICE_URL,
# PULSAR_WEB_URL (and PULSAR_ADMIN_TOKEN_FILE with --token-auth; PULSAR_TLS_SERVICE_URL,
# PULSAR_TLS_WEB_URL and PULSAR_TLS_CA_FILE with --tls), ready to source.
set -euo pipefail

PULSAR_VERSION="${PULSAR_VERSION:-4.0.8}"
PULSAR_PORT="${PULSAR_PORT:-6650}"
PULSAR_WEB_PORT="${PULSAR_WEB_PORT:-8081}"
PULSAR_TLS_PORT="${PULSAR_TLS_PORT:-$((PULSAR_PORT + 1))}"
PULSAR_WEB_TLS_PORT="${PULSAR_WEB_TLS_PORT:-$((PULSAR_WEB_PORT + 1))}"
PULSAR_START_TIMEOUT="${PULSAR_START_TIMEOUT:-120}"
PULSAR_STOP_TIMEOUT="${PULSAR_STOP_TIMEOUT:-30}"
PULSAR_CACHE_DIR="${PULSAR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway/pulsar}"
RUN_DIR="${PULSAR_RUN_DIR:-${TMPDIR:-/tmp}/pulsar-gateway-pulsar-$PULSAR_PORT}"

ARTIFACT="org.apache.pulsar:pulsar-server-distribution:$PULSAR_VERSION:tar.gz:bin"
TARBALL="$PULSAR_CACHE_DIR/pulsar-server-distribution-$PULSAR_VERSION-bin.tar.gz"
PULSAR_HOME="$PULSAR_CACHE_DIR/apache-pulsar-$PULSAR_VERSION"
MAIN_CLASS="org.apache.pulsar.PulsarStandaloneStarter"

# Small heap, quick-start JIT and a serial GC: ready in 10-20 s on 2 cores.
SERVER_MEM="${PULSAR_MEM:--Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g}"
SERVER_GC="${PULSAR_GC:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
# bin/pulsar's CLI tools would otherwise pre-touch a 2 GiB heap.
TOOL_MEM="-Xms32m -Xmx256m -XX:MaxDirectMemorySize=128m"

log() { printf 'pulsar-standalone: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
}

check_java() {
    local java="java" version major
    if [[ -n "${JAVA_HOME:-}" ]]; then
        java="$JAVA_HOME/bin/java"
    fi
    command -v "$java" >/dev/null 2>&1 || die "no java found: Pulsar $PULSAR_VERSION needs JDK 17 or newer"
    version="$("$java" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)"
    major="${version%%.*}"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] ||
        die "java $version found: Pulsar $PULSAR_VERSION needs JDK 17 or newer"
}

cmd_fetch() {
    if [[ -x "$PULSAR_HOME/bin/pulsar" ]]; then
        log "Pulsar $PULSAR_VERSION present in $PULSAR_HOME"
        return
    fi
    mkdir -p "$PULSAR_CACHE_DIR"
    if [[ ! -s "$TARBALL" ]]; then
        command -v mvn >/dev/null 2>&1 || die "mvn not found: it downloads the Pulsar distribution"
        log "downloading $ARTIFACT"
        mvn -B -q -C -Dstyle.color=never dependency:copy -Dartifact="$ARTIFACT" \
            -DoutputDirectory="$PULSAR_CACHE_DIR" >&2 ||
            die "mvn could not fetch $ARTIFACT"
        [[ -s "$TARBALL" ]] || die "download finished but $TARBALL is missing"
    fi
    log "unpacking $TARBALL"
    local tmp
    tmp="$(mktemp -d "$PULSAR_CACHE_DIR/unpack.XXXXXX")"
    tar -xzf "$TARBALL" -C "$tmp"
    [[ -x "$tmp/apache-pulsar-$PULSAR_VERSION/bin/pulsar" ]] ||
        die "unexpected tarball layout in $TARBALL"
    rm -rf "$PULSAR_HOME"
    mv "$tmp/apache-pulsar-$PULSAR_VERSION" "$PULSAR_HOME"
    rmdir "$tmp"
    log "Pulsar $PULSAR_VERSION ready in $PULSAR_HOME"
}

# Prints the pid from the pid file if that process is our Pulsar, else nothing.
running_pid() {
    local pidfile="$RUN_DIR/pulsar.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$MAIN_CLASS"; then
        echo "$pid"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

web_get() {
    local path="$1" auth=()
    if [[ -f "$RUN_DIR/admin.token" ]]; then
        auth=(-H "Authorization: Bearer $(cat "$RUN_DIR/admin.token")")
    fi
    curl -sf --max-time 5 "${auth[@]}" "http://127.0.0.1:$PULSAR_WEB_PORT$path"
}

write_config() {
    local conf="$RUN_DIR/conf/standalone.conf"
    mkdir -p "$RUN_DIR/conf"
    cp "$PULSAR_HOME/conf/standalone.conf" "$conf"
    # The shipped file has no trailing newline: without this, the first
    # override would be glued onto its last line.
    printf '\n' >>"$conf"
    cat >>"$conf" <<EOF
### pulsar-gateway overrides (later keys win) ###
bindAddress=127.0.0.1
advertisedAddress=127.0.0.1
brokerServicePort=$PULSAR_PORT
webServicePort=$PULSAR_WEB_PORT
# Kafka offsets on Pulsar are the broker entry index, and the gateway reads
# broker timestamps: both come from entry metadata, exposed to clients.
brokerEntryMetadataInterceptors=org.apache.pulsar.common.intercept.AppendIndexMetadataInterceptor,org.apache.pulsar.common.intercept.AppendBrokerTimestampMetadataInterceptor
exposingBrokerEntryMetadataToClientEnabled=true
# A consumer may acknowledge single messages of a batched entry; redelivery
# then skips the acknowledged ones (the gateway acks per message).
acknowledgmentAtBatchIndexLevelEnabled=true
# The Pulsar WebSocket API, the reference for the gateway's WebSocket handler.
webSocketServiceEnabled=true
# Stop quickly in tests.
brokerShutdownTimeoutMs=5000
EOF
    if [[ "$SMALL_LEDGERS" == 1 ]]; then
        cat >>"$conf" <<EOF
managedLedgerMaxEntriesPerLedger=200
managedLedgerMinLedgerRolloverTimeMinutes=0
EOF
    fi
    if [[ -n "$TOKEN_KEY" ]]; then
        cat >>"$conf" <<EOF
authenticationEnabled=true
authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken
tokenSecretKey=file://$TOKEN_KEY
authorizationEnabled=true
superUserRoles=admin
brokerClientAuthenticationPlugin=org.apache.pulsar.client.impl.auth.AuthenticationToken
brokerClientAuthenticationParameters=file://$RUN_DIR/admin.token
EOF
    fi
    if [[ "$TLS" == 1 ]]; then
        cat >>"$conf" <<EOF
brokerServicePortTls=$PULSAR_TLS_PORT
webServicePortTls=$PULSAR_WEB_TLS_PORT
tlsCertificateFilePath=$RUN_DIR/tls/broker.pem
tlsKeyFilePath=$RUN_DIR/tls/broker.key
tlsTrustCertsFilePath=$RUN_DIR/tls/ca.pem
EOF
    fi
}

# A throw-away CA and a broker certificate for 127.0.0.1 and localhost;
# a restart with --keep-data keeps them, so clients' trust still holds.
setup_tls() {
    local keep_data="$1" dir="$RUN_DIR/tls"
    if [[ "$keep_data" == 1 && -s "$dir/ca.pem" && -s "$dir/broker.pem" && -s "$dir/broker.key" ]]; then
        return
    fi
    command -v openssl >/dev/null 2>&1 || die "openssl not found: --tls makes test certificates with it"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/broker.ext"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pulsar-gateway test CA" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" &&
            openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
                -keyout "$dir/broker.key" -out "$dir/broker.csr" &&
            openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
                -CAcreateserial -days 2 -extfile "$dir/broker.ext" -out "$dir/broker.pem"
    } >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        die "openssl could not make the test certificates"
    }
}

setup_token_auth() {
    local tools_env=(env "PULSAR_MEM=$TOOL_MEM" "PULSAR_GC=-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
        "PULSAR_LOG_DIR=$RUN_DIR/logs")
    if [[ -z "$TOKEN_KEY" ]]; then
        TOKEN_KEY="$RUN_DIR/token-secret.key"
        "${tools_env[@]}" "$PULSAR_HOME/bin/pulsar" tokens create-secret-key \
            --output "$TOKEN_KEY" >/dev/null
    fi
    [[ -s "$TOKEN_KEY" ]] || die "token secret key $TOKEN_KEY is missing or empty"
    "${tools_env[@]}" "$PULSAR_HOME/bin/pulsar" tokens create \
        --secret-key "file://$TOKEN_KEY" --subject admin >"$RUN_DIR/admin.token"
    [[ -s "$RUN_DIR/admin.token" ]] || die "could not create the admin token"
}

cmd_start() {
    local keep_data=0 token_auth=0
    TOKEN_KEY=""
    SMALL_LEDGERS=0
    TLS=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --run-dir) RUN_DIR="$2"; shift 2 ;;
            --keep-data) keep_data=1; shift ;;
            --token-auth) token_auth=1; shift ;;
            --token-secret-key) token_auth=1; TOKEN_KEY="$2"; shift 2 ;;
            --small-ledgers) SMALL_LEDGERS=1; shift ;;
            --tls) TLS=1; shift ;;
            *) die "unknown start option: $1" ;;
        esac
    done
    if [[ -n "$TOKEN_KEY" ]]; then
        TOKEN_KEY="$(cd "$(dirname "$TOKEN_KEY")" && pwd)/$(basename "$TOKEN_KEY")"
    fi

    check_java
    command -v curl >/dev/null 2>&1 || die "curl not found"
    cmd_fetch

    mkdir -p "$RUN_DIR"
    RUN_DIR="$(cd "$RUN_DIR" && pwd)"
    local pid
    pid="$(running_pid)"
    [[ -z "$pid" ]] || die "already running (pid $pid, run dir $RUN_DIR): stop it first"
    local port ports=("$PULSAR_PORT" "$PULSAR_WEB_PORT")
    if [[ "$TLS" == 1 ]]; then
        ports+=("$PULSAR_TLS_PORT" "$PULSAR_WEB_TLS_PORT")
    fi
    for port in "${ports[@]}"; do
        if port_in_use "$port"; then
            die "port $port on 127.0.0.1 is in use (set PULSAR_PORT / PULSAR_WEB_PORT, or the TLS ports)"
        fi
    done

    if [[ $keep_data -eq 0 ]]; then
        rm -rf "$RUN_DIR/data"
    fi
    rm -f "$RUN_DIR/admin.token" "$RUN_DIR/pulsar.env" "$RUN_DIR/pulsar.pid"
    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
    if [[ $token_auth -eq 1 ]]; then
        setup_token_auth
    fi
    if [[ "$TLS" == 1 ]]; then
        setup_tls "$keep_data"
    fi
    write_config

    log "starting Pulsar $PULSAR_VERSION in $RUN_DIR (broker :$PULSAR_PORT, web :$PULSAR_WEB_PORT)"
    local started=$SECONDS
    # The subshell execs nohup, which execs bin/pulsar, which execs java: $! is
    # the JVM's pid.
    (
        cd "$RUN_DIR"
        exec env PULSAR_STANDALONE_CONF="$RUN_DIR/conf/standalone.conf" \
            PULSAR_LOG_DIR="$RUN_DIR/logs" \
            PULSAR_MEM="$SERVER_MEM" PULSAR_GC="$SERVER_GC" \
            nohup "$PULSAR_HOME/bin/pulsar" standalone \
            --no-functions-worker --no-stream-storage \
            --metadata-dir "$RUN_DIR/data/metadata" \
            --bookkeeper-dir "$RUN_DIR/data/bookkeeper" \
            </dev/null >"$RUN_DIR/logs/stdout.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$RUN_DIR/pulsar.pid"

    # Ready = the admin API lists public/default (it answers before the
    # namespace exists, so HTTP 200 alone is not enough).
    while true; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "Pulsar exited during start-up; last lines of $RUN_DIR/logs/stdout.log:"
            tail -n 30 "$RUN_DIR/logs/stdout.log" >&2 || true
            rm -f "$RUN_DIR/pulsar.pid"
            exit 1
        fi
        if web_get /admin/v2/namespaces/public 2>/dev/null | grep -q '"public/default"'; then
            break
        fi
        if ((SECONDS - started >= PULSAR_START_TIMEOUT)); then
            log "not ready after ${PULSAR_START_TIMEOUT}s; stopping it. Logs: $RUN_DIR/logs"
            tail -n 30 "$RUN_DIR/logs/stdout.log" >&2 || true
            cmd_stop
            exit 1
        fi
        sleep 1
    done

    {
        echo "PULSAR_SERVICE_URL=pulsar://127.0.0.1:$PULSAR_PORT"
        echo "PULSAR_WEB_URL=http://127.0.0.1:$PULSAR_WEB_PORT"
        echo "PULSAR_PID=$pid"
        if [[ -f "$RUN_DIR/admin.token" ]]; then
            echo "PULSAR_ADMIN_TOKEN_FILE=$RUN_DIR/admin.token"
        fi
        if [[ "$TLS" == 1 ]]; then
            echo "PULSAR_TLS_SERVICE_URL=pulsar+ssl://127.0.0.1:$PULSAR_TLS_PORT"
            echo "PULSAR_TLS_WEB_URL=https://127.0.0.1:$PULSAR_WEB_TLS_PORT"
            echo "PULSAR_TLS_CA_FILE=$RUN_DIR/tls/ca.pem"
        fi
    } >"$RUN_DIR/pulsar.env"
    log "ready in $((SECONDS - started))s (pid $pid)"
    cat "$RUN_DIR/pulsar.env"
}

parse_run_dir() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --run-dir) RUN_DIR="$2"; shift 2 ;;
            *) die "unknown option: $1" ;;
        esac
    done
}

cmd_stop() {
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        log "not running (run dir $RUN_DIR)"
        rm -f "$RUN_DIR/pulsar.pid"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + PULSAR_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after ${PULSAR_STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.2
        done
    fi
    rm -f "$RUN_DIR/pulsar.pid" "$RUN_DIR/pulsar.env"
    log "stopped"
}

cmd_status() {
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        echo "not running (run dir $RUN_DIR)"
        return 3
    fi
    local rss_kb
    rss_kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    echo "running: pid $pid, RSS $((rss_kb / 1024)) MiB, run dir $RUN_DIR"
    if [[ -f "$RUN_DIR/pulsar.env" ]]; then
        cat "$RUN_DIR/pulsar.env"
    else
        echo "(not ready yet)"
    fi
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        fetch) cmd_fetch ;;
        start) cmd_start "$@" ;;
        stop) parse_run_dir "$@"; cmd_stop ;;
        status) parse_run_dir "$@"; cmd_status ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
