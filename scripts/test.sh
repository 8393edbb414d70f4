#!/usr/bin/env bash
# The one test command: sets up everything it needs on a fresh machine (Debian
# packages, a Python virtualenv with the pinned clients), reuses caches when
# they are there, then runs formatting, lints, every Rust test and the Python
# tests. Stops at the first failure with a non-zero exit.
#
# Caches (all under ${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway/):
#   target/             cargo build output, unless CARGO_TARGET_DIR is set
#   venv-<hash>/        virtualenv keyed on tests/python/requirements.txt
#   java-clients-<hash>/ the Java Kafka client's jars, keyed on tests/java/pom.xml
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_ROOT/target}"
# Each run builds a fresh clone: incremental artifacts would only pile up
# in the shared target dir (gigabytes per run).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
PYTHON="${PYTHON:-python3}"

START_ALL=$SECONDS
SECTION_NAME=""
SECTION_START=$SECONDS

end_section() {
    if [[ -n "$SECTION_NAME" ]]; then
        printf '    (%s: %ds)\n' "$SECTION_NAME" "$((SECONDS - SECTION_START))"
    fi
}

section() {
    end_section
    SECTION_NAME="$1"
    SECTION_START=$SECONDS
    printf '\n==== %s ====\n' "$1"
}

die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

on_exit() {
    local rc=$?
    if [[ -n "${PULSAR_RUN_DIR:-}" ]]; then
        deploy/pulsar-standalone.sh stop --run-dir "$PULSAR_RUN_DIR" >/dev/null 2>&1 || true
        rm -rf "$PULSAR_RUN_DIR"
    fi
    if [[ $rc -ne 0 ]]; then
        printf '\n==== FAILED in step "%s" (exit %d) after %ds ====\n' \
            "${SECTION_NAME:-setup}" "$rc" "$((SECONDS - START_ALL))" >&2
    fi
}
trap on_exit EXIT

# --- Debian packages ---------------------------------------------------------
# command-that-must-exist:debian-package
DEBIAN_NEEDS=(
    "protoc:protobuf-compiler" # Pulsar's protobuf definitions (Pulsar backend)
    "openssl:openssl"          # test certificates for the TLS standalone (deploy/), test JWT key pairs (src/auth.rs)
    "mosquitto_sub:mosquitto-clients" # MQTT clients of the MQTT handler's tests (tests/mqtt.rs)
)

ensure_debian_packages() {
    local missing=() entry cmd pkg
    for entry in "${DEBIAN_NEEDS[@]}"; do
        cmd="${entry%%:*}"
        pkg="${entry#*:}"
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "all present: ${DEBIAN_NEEDS[*]}"
        return
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and no apt-get here: install them with your package manager"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "missing Debian packages ${missing[*]}: not root and no sudo; run as root: apt-get install -y ${missing[*]}"
        sudo=(sudo)
    fi
    echo "installing: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --- Rust toolchain ----------------------------------------------------------
check_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
    cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
    cargo --version
    echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
}

# --- Python virtualenv -------------------------------------------------------
# scripts/python-venv.sh creates (or reuses) it and prints its interpreter.
ensure_venv() {
    PULSAR_GATEWAY_PYTHON="$(PYTHON="$PYTHON" scripts/python-venv.sh | tail -n 1)"
    [[ -x "$PULSAR_GATEWAY_PYTHON" ]] || die "no Python virtualenv"
    export PULSAR_GATEWAY_PYTHON
    echo "PULSAR_GATEWAY_PYTHON=$PULSAR_GATEWAY_PYTHON"
}

# --- Java client jars --------------------------------------------------------
# kafka-clients and its dependencies from Maven Central (tests/java/pom.xml),
# copied once into a directory keyed on the pom.
ensure_java_clients() {
    command -v java >/dev/null 2>&1 || die "java not found: install a JDK 17+"
    command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven"
    local hash dir
    hash="$(sha256sum tests/java/pom.xml | cut -c1-16)"
    dir="$CACHE_ROOT/java-clients-$hash"
    if [[ -f "$dir/.complete" ]]; then
        echo "reusing $dir"
    else
        rm -rf "$dir"
        mvn -q -B -f tests/java/pom.xml dependency:copy-dependencies -DoutputDirectory="$dir"
        touch "$dir/.complete"
    fi
    export PULSAR_GATEWAY_JAVA_CLASSPATH="$dir/*"
    echo "PULSAR_GATEWAY_JAVA_CLASSPATH=$PULSAR_GATEWAY_JAVA_CLASSPATH"
}

# --- Steps -------------------------------------------------------------------
section "setup: Debian packages"
ensure_debian_packages
protoc --version

section "setup: Rust toolchain"
check_rust

section "setup: Python virtualenv"
ensure_venv

section "setup: Java Kafka client"
ensure_java_clients

# A real Apache Pulsar standalone for the Pulsar-backend tests: fetched
# (cached) and started in the background while the code builds, stopped on
# exit. Its own ports, so a developer's standalone on 6650 is left alone.
section "setup: Apache Pulsar standalone (background)"
export PULSAR_PORT="${PULSAR_GATEWAY_TEST_PULSAR_PORT:-16650}"
export PULSAR_WEB_PORT="${PULSAR_GATEWAY_TEST_PULSAR_WEB_PORT:-18081}"
PULSAR_RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/pulsar-gateway-test-XXXXXX")"
export PULSAR_RUN_DIR
deploy/pulsar-standalone.sh fetch
deploy/pulsar-standalone.sh start --small-ledgers --run-dir "$PULSAR_RUN_DIR" >"$PULSAR_RUN_DIR/start.log" 2>&1 &
PULSAR_START_PID=$!
# on_exit stops it.

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "wait for Apache Pulsar"
if ! wait "$PULSAR_START_PID"; then
    cat "$PULSAR_RUN_DIR/start.log" >&2
    exit 1
fi
# shellcheck disable=SC1091
. "$PULSAR_RUN_DIR/pulsar.env"
export PULSAR_GATEWAY_TEST_PULSAR_URL="$PULSAR_SERVICE_URL"
export PULSAR_GATEWAY_TEST_PULSAR_WEB_URL="$PULSAR_WEB_URL"

section "cargo test --workspace"
cargo test --workspace

section "vendor/pulsar: the patches' own tests"
cargo test --manifest-path vendor/pulsar/Cargo.toml --lib \
    --no-default-features --features tokio-rustls-runtime-ring,compression -- gateway_patch

section "vendor/kafka-protocol: the patches' own tests"
cargo test --manifest-path vendor/kafka-protocol/Cargo.toml --lib -- gateway_patch

section "pytest tests/python"
set +e
"$PULSAR_GATEWAY_PYTHON" -m pytest -p no:cacheprovider tests/python
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "pytest: no Python tests were collected, none ran" ;;
    *) exit "$rc" ;;
esac

end_section
SECTION_NAME=""
printf '\n==== all checks passed in %ds ====\n' "$((SECONDS - START_ALL))"
