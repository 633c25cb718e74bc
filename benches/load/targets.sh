#!/usr/bin/env bash
# Issue #7's targets that compare two rows, each measured interleaved with its reference
# (ab.sh: the proxy pinned to CPU 0, rounds alternating A B B A ...), so that this VM's
# drift falls on both sides alike; one table with a verdict per target at the end.
#
#   bash benches/load/targets.sh [--rounds N] [--seconds S] [BIN]   # BIN: target/release/portcullis
#
# | target                                  | measured by                                      |
# | public >= 1.0x nginx, CPU <= nginx's    | ab.sh BIN                                        |
# | RS256 cache hit >= 0.95x own public     | ab.sh --auth rs256 BIN                           |
# | RS256 cache hit >= 1.0x nginx           | ab.sh --auth rs256 --against nginx BIN (same token to nginx) |
# | cookie within 5% of Bearer              | ab.sh --auth cookie BIN, over the hit's ratio to public      |
# | p99 <= direct + 1 ms (public, RS256 hit)| ab.sh --against direct [--auth rs256] BIN        |
# | TLS >= 1.0x nginx TLS proxy, keep-alive | ab.sh --tls BIN (public route over TLS, both)   |
# | a new connection per request (reported) | ab.sh --close BIN (no target in the issue)       |
#
# A verdict compares the mean of the rounds with the target. The median round and the range
# are printed beside it: a mean and a median on opposite sides of the line mean "at the line",
# and the table says so. The throughput rows against HAProxy and the memory rows are in
# run.sh and extra_rows.sh; handshakes per second in extra_rows.sh. The public row's CPU is
# also split into user and kernel time (the kernel's TCP work is most of a proxy's CPU, and
# both proxies send the same segments). Defaults: 8 rounds of 4 s per target, about 11 minutes.
# Loopback only; needs what ab.sh needs (wrk, nginx, taskset, python3 with cryptography).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=8 secs=4
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) secs=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
bin=${1:-$root/target/release/portcullis}
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh (the shipped build) or cargo build --release" >&2; exit 1; }
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# measure NAME [ab.sh options]: runs ab.sh, keeps its output in $logs/NAME, prints its summary.
measure() {
    local name=$1
    shift
    echo "== $name: ab.sh $*" >&2
    bash "$here/ab.sh" --rounds "$rounds" --seconds "$secs" "$@" "$bin" > "$logs/$name" 2>&1 || {
        cat "$logs/$name" >&2
        exit 1
    }
    tail -5 "$logs/$name" >&2
}
# ratio NAME mean|median|low|high|cpu: a figure of NAME's "A/B req/s" summary line.
ratio() {
    awk -v want="$2" '/^A\/B req\/s/ {
        gsub(/[(),;x]/, " ")
        # A/B req/s MEAN median round MEDIAN rounds LOW-HIGH CPU per request A/B CPU
        split($8, range, "-")
        v["mean"] = $3; v["median"] = $6; v["low"] = range[1]; v["high"] = range[2]; v["cpu"] = $NF
        print v[want]
    }' "$logs/$1"
}
# p99 NAME: A's p99 minus B's (ms), the medians of the rounds.
p99() { sed -n 's/^p99, median.*(A - B \([-+0-9.]*\) ms).*/\1/p' "$logs/$1"; }

measure public
measure hit --auth rs256
measure hit-nginx --auth rs256 --against nginx
measure cookie --auth cookie
measure p99-public --against direct
measure p99-hit --auth rs256 --against direct
measure tls --tls
measure close --close

# verdict MEAN MEDIAN TARGET: met / not met / at the line (mean and median disagree).
verdict() {
    awk -v m="$1" -v d="$2" -v t="$3" 'BEGIN {
        if (m >= t && d >= t) print "met"
        else if (m < t && d < t) print "NOT MET"
        else print "at the line"
    }'
}
row() { printf '| %-38s | %-44s | %-11s |\n' "$@"; }
echo
echo "Issue #7 targets, $(date -u +%FT%TZ), $rounds interleaved rounds of ${secs}s each, $bin"
row "target" "measured (mean; median round; range)" "verdict"
row "--------------------------------------" "--------------------------------------------" "-----------"
summary() { echo "$(ratio "$1" mean)x; $(ratio "$1" median)x; $(ratio "$1" low)-$(ratio "$1" high)x"; }
row "public >= 1.0x nginx" "$(summary public)" "$(verdict "$(ratio public mean)" "$(ratio public median)" 1.0)"
cpu=$(ratio public cpu)
# cpu_split NAME: "user Ux, kernel Kx" from NAME's CPU split line.
cpu_split() { sed -n 's/^CPU per request, user + kernel:.*(A\/B \([0-9.]*\)x user, \([0-9.]*\)x kernel).*/user \1x, kernel \2x/p' "$logs/$1"; }
row "public CPU/request <= nginx's" "${cpu}x nginx's ($(cpu_split public))" "$(awk -v c="$cpu" 'BEGIN {print (c <= 1.0) ? "met" : "NOT MET"}')"
row "RS256 hit >= 0.95x own public" "$(summary hit)" "$(verdict "$(ratio hit mean)" "$(ratio hit median)" 0.95)"
row "RS256 hit >= 1.0x nginx (same request)" "$(summary hit-nginx)" "$(verdict "$(ratio hit-nginx mean)" "$(ratio hit-nginx median)" 1.0)"
# Cookie and Bearer are each measured against the same public route: their ratio of ratios.
cookie_mean=$(awk -v c="$(ratio cookie mean)" -v b="$(ratio hit mean)" 'BEGIN {printf "%.2f", c / b}')
cookie_median=$(awk -v c="$(ratio cookie median)" -v b="$(ratio hit median)" 'BEGIN {printf "%.2f", c / b}')
row "cookie >= 0.95x Bearer" "${cookie_mean}x; ${cookie_median}x (cookie $(ratio cookie mean)x public)" "$(verdict "$cookie_mean" "$cookie_median" 0.95)"
for name in public hit; do
    d=$(p99 "p99-$name")
    row "p99 <= direct + 1 ms ($name)" "$d ms over direct (medians of the rounds)" "$(awk -v d="$d" 'BEGIN {print (d <= 1.0) ? "met" : "NOT MET"}')"
done
row "TLS >= 1.0x nginx TLS, keep-alive" "$(summary tls) (CPU $(ratio tls cpu)x)" "$(verdict "$(ratio tls mean)" "$(ratio tls median)" 1.0)"
row "new connection per request, vs nginx" "$(summary close) (CPU $(ratio close cpu)x; $(cpu_split close))" "reported"
