#!/usr/bin/env bash
# What the test suite needs beyond Python, installed when missing (idempotent, like
# `deploy/stack.py setup` installs PostgreSQL):
# - Chromium, headless, for the operator page's browser test (tests/e2e/test_ops_page.py);
# - Node.js, npm and a C++ compiler for the Node.js example consumer (kafkajs + kafkajs-lz4,
#   whose lz4 addon node-gyp builds against Debian's Node headers; ADR 0830), then `npm ci`;
# - promtool, to check and unit-test the alert rules (ADR 0810). Debian's `prometheus` package
#   would also install and start the server, so only its files are unpacked, under deploy/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v g++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}"
fi

prom=deploy/.cache/prometheus
if ! command -v promtool >/dev/null && [ ! -x "$prom/usr/bin/promtool" ]; then
  mkdir -p "$prom"
  (cd "$prom" && { apt-get download prometheus 2>/dev/null \
      || { apt-get update -qq 2>/dev/null || sudo apt-get update -qq; apt-get download prometheus; }; } \
    && dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb)
fi

node=examples/node-consumer
if [ ! -f "$node/node_modules/.installed" ] || [ "$node/package-lock.json" -nt "$node/node_modules/.installed" ]; then
  if [ -d /usr/include/node ]; then export npm_config_nodedir=/usr; fi
  npm ci --prefix "$node" --no-audit --no-fund
  touch "$node/node_modules/.installed"
fi
