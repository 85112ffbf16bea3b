#!/usr/bin/env bash
# Headless shardcache load test.
#
#   loadtest/run.sh HOST [extra locust args...]
#   e.g. USERS=50 DURATION=2m loadtest/run.sh http://127.0.0.1:8080
#
# Environment: USERS (10), SPAWN_RATE (10/s), DURATION (20s), STOP_TIMEOUT (5 s for
# in-flight tasks to finish at the end), CSV_PREFIX (loadtest-results/locust, relative
# to the current directory), LOCUST (the locust executable; default: `locust` on PATH),
# plus the workload's SHARDCACHE_* variables (see locustfile.py).
#
# Exits with Locust's status: 0 when every request passed its checks, 1 when any
# failed (or 2 on an error in the locustfile itself).
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 HOST [extra locust args...]   e.g. $0 http://127.0.0.1:8080" >&2
    exit 2
fi
host=$1
shift

locust=${LOCUST:-locust}
if ! command -v "$locust" >/dev/null 2>&1; then
    echo "$0: '$locust' not found; pip install -r $(dirname "$0")/requirements.txt or set LOCUST=/path/to/locust" >&2
    exit 2
fi

exec "$locust" \
    -f "$(dirname "$0")/locustfile.py" \
    --headless \
    -u "${USERS:-10}" \
    -r "${SPAWN_RATE:-10}" \
    -t "${DURATION:-20s}" \
    --stop-timeout "${STOP_TIMEOUT:-5}" \
    --host "$host" \
    --csv "${CSV_PREFIX:-loadtest-results/locust}" \
    --only-summary \
    --exit-code-on-error 1 \
    "$@"
