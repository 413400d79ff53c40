#!/usr/bin/env bash
# A real Prometheus (Debian's `prometheus` package: no Docker) scraping a `lethe serve` on
# this machine, with deploy/prometheus's config and alert rules.
#
#   apt-get install -y --no-install-recommends prometheus   # once; .ci/run does it too
#   deploy/local-prometheus.sh                               # scrapes localhost:3000
#   deploy/local-prometheus.sh localhost:3917                # another `lethe serve --port`
#
# Then http://127.0.0.1:9090/alerts, or curl -s 127.0.0.1:9090/api/v1/alerts.
# Environment (all optional):
#   PROMETHEUS_LISTEN    address Prometheus listens on        (127.0.0.1:9090)
#   PROMETHEUS_INTERVAL  scrape and rule evaluation interval  (the config's: 15s)
#   PROMETHEUS_DATA      TSDB folder                          (a new temporary folder)
#   PROMETHEUS_BIN       the binary                           (prometheus on PATH)
# The config is checked with promtool first (when it is there). Runs in the foreground;
# stop it with Ctrl-C / SIGTERM. tests/test_prometheus.py runs this script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:-localhost:3000}"
listen="${PROMETHEUS_LISTEN:-127.0.0.1:9090}"
bin="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "local-prometheus.sh: no prometheus binary; install Debian's package:" >&2
  echo "  apt-get install -y --no-install-recommends prometheus" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lethe-prometheus.XXXXXX")"
data="${PROMETHEUS_DATA:-$work/data}"
cp "$here/prometheus/alerts.yml" "$work/alerts.yml"
# the shipped config, with the target (and the intervals, if asked) replaced
sed -e "s|\"localhost:3000\"|\"$target\"|" "$here/prometheus/prometheus.yml" > "$work/prometheus.yml"
if [[ -n "${PROMETHEUS_INTERVAL:-}" ]]; then
  sed -i -E "s/^(\s*)(scrape|evaluation)_interval: .*/\1\2_interval: $PROMETHEUS_INTERVAL/" "$work/prometheus.yml"
fi
promtool="$(dirname "$bin")/promtool"
if [[ -x "$promtool" ]]; then
  "$promtool" check config "$work/prometheus.yml" >/dev/null
fi

echo "local-prometheus.sh: scraping http://$target/metrics, listening on http://$listen (config $work/prometheus.yml)" >&2
exec "$bin" --config.file="$work/prometheus.yml" --storage.tsdb.path="$data" \
  --web.listen-address="$listen" --storage.tsdb.retention.time=7d
