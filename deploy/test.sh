#!/usr/bin/env bash
# The test command (README, `make test`, .ci/run): venv + Kafka jars, start Kafka, ruff, mypy,
# pytest, and stop Kafka even on failure.  A broker that does not start fails the run.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export STIXBUS_HOME="${STIXBUS_HOME:-$repo/.stixbus-test}"
export KAFKA_PORT="${KAFKA_PORT:-19092}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
export STIXBUS_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
# The shared test broker stays plaintext (an explicit opt-in: conftest's buses use random topic
# prefixes without ACLs).  tests/test_security_broker.py starts its own SASL_SSL broker with ACLs.
export STIXBUS_KAFKA_SECURITY="${STIXBUS_KAFKA_SECURITY:-plaintext}"

bash deploy/bootstrap.sh
# promtool + prometheus (Debian package) for the alert-rule and real-scrape tests.
if ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
# unbound (Debian package) for the RPZ test: a real resolver loads the sinks' zone by AXFR.
if ! command -v unbound >/dev/null 2>&1 && [ ! -x /usr/sbin/unbound ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    unbound >/dev/null
fi
started_here=0
cleanup() {
  if [ "$started_here" = 1 ]; then bash deploy/kafka/kafka.sh down || true; fi
}
trap cleanup EXIT
if ! bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  bash deploy/kafka/kafka.sh up
  started_here=1
fi

echo "== import-linter"; .venv/bin/lint-imports
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
# Arguments (e.g. `make chaos`: -m chaos) run one pytest as given.  Without them: every test
# but the timing-bound ones on STIXBUS_TEST_PROCESSES processes (a test waits on the broker and
# its worker more than it computes; each has its own topic prefix, home and ports), then the
# timing-bound ones (`serial`, tests/conftest.py) alone.  Both phases run; either failing fails.
if [ "$#" -gt 0 ]; then
  echo "== pytest"; .venv/bin/pytest -q --durations=40 "$@"
  exit
fi
status=0
echo "== pytest: ${STIXBUS_TEST_PROCESSES:-2} processes"
.venv/bin/pytest -q --durations=30 -n "${STIXBUS_TEST_PROCESSES:-2}" --dist loadfile \
  -m "not chaos and not serial" || status=$?
echo "== pytest: timing-bound tests, alone"
.venv/bin/pytest -q --durations=10 -m "serial and not chaos" || status=$?
exit "$status"
