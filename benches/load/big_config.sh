#!/usr/bin/env bash
# The big-rule-set rows (#24): `check`, start and reload of a ROUTES-route config over
# HOSTS hosts (benches/load/big_config.py), with their time and peak RSS. Targets: each
# < 2 s and < 200 MiB. The reload comes 15 s after the start (the allocator has returned
# the start's parse by then); the peak is VmHWM read as "config reloaded" is logged. ~40 s.
#
#   bash benches/load/big_config.sh [path/to/portcullis] [ROUTES] [HOSTS]   (100000 1000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/portcullis}
routes=${2:-100000}
hosts=${3:-1000}
for c in python3 bc; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install python3 bc)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install time)" >&2; exit 1; }
[ -x "$bin" ] || { echo "missing $bin: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 "$here/big_config.py" "$routes" "$hosts" "$work"
mib() { awk '{print $2 / 1024}' <<<"$(grep "$1" "/proc/$2/status")"; }
wait_for() { # wait_for PATTERN COUNT: until the log has more than COUNT lines matching
    until [ "$(grep -c "$1" "$work/serve.log")" -gt "$2" ]; do sleep 0.005; done
}

/usr/bin/time -v "$bin" check --config "$work/big.toml" >/dev/null 2>"$work/check.err" || true
printf 'check:  %s s, peak %.1f MiB\n' \
    "$(grep 'Elapsed' "$work/check.err" | awk '{print $NF}' | awk -F: '{print $NF + 60 * $(NF-1)}')" \
    "$(grep 'Maximum resident' "$work/check.err" | awk '{print $NF / 1024}')"

start=$(date +%s.%N)
"$bin" serve --config "$work/big.toml" >"$work/serve.log" 2>&1 &
pid=$!
echo $pid >"$work/gw.pid"
wait_for "listening" 0
up=$(date +%s.%N)
printf 'start:  %.2f s to "listening", peak %.1f MiB\n' "$(bc <<<"$up - $start")" "$(mib VmHWM $pid)"
sleep 15
printf 'idle:   %.1f MiB 15 s after the start\n' "$(mib VmRSS $pid)"
before=$(grep -c "reloaded" "$work/serve.log" || true)
t0=$(date +%s.%N)
kill -HUP $pid
wait_for "reloaded" "$before"
t1=$(date +%s.%N)
printf 'reload: %.2f s, peak %.1f MiB\n' "$(bc <<<"$t1 - $t0")" "$(mib VmHWM $pid)"
sleep 15
printf 'idle:   %.1f MiB 15 s after the reload\n' "$(mib VmRSS $pid)"
