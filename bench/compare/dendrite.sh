#!/usr/bin/env bash
# Engram against Dendrite v0.13.8 under the same load, in one run.
#
# Workload: `engram bench load` (the same tool, the same options) first
# against a fresh `engram serve`, then against a fresh Dendrite monolith
# (SQLite, federation off, rate limiting off), each on 127.0.0.1 with a
# new data directory. It prints each run's JSON lines with a "server"
# field added, then one line with the ratios, and the load average.
#
#   bench/compare/dendrite.sh [--users 100 --rooms 100 --duration 60s ...]
#
# The arguments go to `engram bench load` unchanged (default: 100 users,
# 100 rooms, 60 s). Dendrite is built from its Go module as the tool of
# federation/e2e/testdata/dendrite (the first build takes many minutes;
# it is then cached by the Go build cache).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--users 100 --rooms 100 --duration 60s)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 600); do
    curl -fsS "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server at $1 did not come up; its log: $2" >&2; tail -20 "$2" >&2; exit 1
}

(cd "$repo" && go build -o "$work/engram" ./cmd/engram)
dendrite=$(cd "$repo/federation/e2e/testdata/dendrite" && go tool -n dendrite)

# Engram.
ep=$(free_port)
mkdir -p "$work/engram-data"
cat > "$work/engram-data/engram.yaml" <<YAML
server_name: "bench.localhost"
data_dir: "$work/engram-data"
listen: "127.0.0.1:$ep"
enable_registration: true
enable_registration_without_verification: true
rate_limiting_enabled: false
bcrypt_rounds: 4
log_level: warn
YAML
"$work/engram" serve --config "$work/engram-data/engram.yaml" > "$work/engram.log" 2>&1 &
epid=$!; pids+=("$epid")
wait_up "http://127.0.0.1:$ep" "$work/engram.log"
"$work/engram" bench load --url "http://127.0.0.1:$ep" --pid "$epid" --data-dir "$work/engram-data" "${args[@]}" \
  | sed 's/^{/{"server":"engram",/' | tee "$work/engram.jsonl"
kill "$epid"; wait "$epid" 2>/dev/null || true

# Dendrite.
dp=$(free_port)
dd="$work/dendrite"; mkdir -p "$dd"
python3 - "$dd/matrix_key.pem" <<'PY'
import base64, os, sys
seed = os.urandom(32)
open(sys.argv[1], "w").write("-----BEGIN MATRIX PRIVATE KEY-----\nKey-ID: ed25519:bench\n\n" + base64.b64encode(seed).decode() + "\n-----END MATRIX PRIVATE KEY-----\n")
PY
db() { printf '\n  database:\n    connection_string: file:%s\n' "$dd/$1.db"; }
cat > "$dd/dendrite.yaml" <<YAML
version: 2
global:
  server_name: bench.localhost
  private_key: $dd/matrix_key.pem
  disable_federation: true
  trusted_third_party_id_servers: []
  report_stats:
    enabled: false
  jetstream:
    storage_path: $dd
    in_memory: false
client_api:
  registration_disabled: false
  guests_disabled: true
  rate_limiting:
    enabled: false
federation_api:$(db federationapi)
  key_perspectives: []
key_server:$(db keyserver)
media_api:$(db mediaapi)
  base_path: $dd/media
mscs:$(db mscs)
relay_api:$(db relayapi)
room_server:$(db roomserver)
sync_api:$(db syncapi)
  search:
    enabled: false
user_api:
  bcrypt_cost: 4
  account_database:
    connection_string: file:$dd/userapi.db
logging:
  - type: std
    level: warn
YAML
(cd "$dd" && exec "$dendrite" --config "$dd/dendrite.yaml" --really-enable-open-registration --http-bind-address "127.0.0.1:$dp") > "$work/dendrite.log" 2>&1 &
dpid=$!; pids+=("$dpid")
wait_up "http://127.0.0.1:$dp" "$work/dendrite.log"
"$work/engram" bench load --url "http://127.0.0.1:$dp" --pid "$dpid" --data-dir "$dd" "${args[@]}" \
  | sed 's/^{/{"server":"dendrite",/' | tee "$work/dendrite.jsonl"

python3 - "$work/engram.jsonl" "$work/dendrite.jsonl" <<'PY'
import json, os, sys
def summary(path):
    out = {}
    for line in open(path):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "name" in d and isinstance(d.get("value"), (int, float)):
            out[d["name"]] = d["value"]
    return out
e, d = summary(sys.argv[1]), summary(sys.argv[2])
ratios = {k: round(e[k] / d[k], 2) for k in sorted(e) if k in d and d[k]}
print(json.dumps({"compare": "engram/dendrite", "ratios": ratios, "loadavg": os.getloadavg()}))
PY
