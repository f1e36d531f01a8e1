#!/usr/bin/env bash
# `make bench`: the same steps through `stevedore run` and through
# `docker run --rm` on the bookworm fixture, in one go, reported as medians
# and ratios against docker in the same run (machines here are shared and
# noisy; only ratios mean anything). Also the agent's peak memory after a
# trivial step and after the big log, to show it does not grow with log size.
#   BENCH_RUNS (default 7) trivial runs each way; BENCH_BIG_RUNS (default 3)
#   runs of BENCH_MB (default 200) MB of log lines each way.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../internal/testenv/fixtures.env"
bin=$here/../bin
runs=${BENCH_RUNS:-7}
big_runs=${BENCH_BIG_RUNS:-3}
mb=${BENCH_MB:-200}
img=$STEVEDORE_FIXTURE_BOOKWORM
port=${STEVEDORE_BENCH_PORT:-10935}
work=$(mktemp -d /tmp/stevedore-bench.XXXXXX)
chmod 755 "$work"
agent_pid=
trap '[ -n "$agent_pid" ] && kill $agent_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

client=$("$bin/stevedore" cert --state-dir "$work/client" 2>/dev/null)
agent=$("$bin/stevedore" cert --state-dir "$work/agent" 2>/dev/null)
"$bin/stevedore" agent --state-dir "$work/agent" --listen "127.0.0.1:$port" --trust "$client" --log-level warn >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
docker image inspect "$img" >/dev/null

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
time_ms() { # time_ms CMD...: prints elapsed ms; output discarded
	local t0 t1
	t0=$(now)
	"$@" >/dev/null 2>"$work/last.err" || true
	t1=$(now)
	echo $(((t1 - t0) / 1000000))
}
srun() { "$bin/stevedore" run --state-dir "$work/client" --agent "127.0.0.1:$port" --agent-thumbprint "$agent" --image "$img" --pull if-not-present "$@"; }
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$agent_pid/status"; }

big="yes 'stevedore log throughput line: the quick brown fox jumps over the lazy dog 0123456789' | head -c ${mb}000000"

# Warm up both paths once (page cache, probe cache).
time_ms docker run --rm "$img" true >/dev/null
time_ms srun --script true >/dev/null

: >"$work/d" ; : >"$work/s"
for _ in $(seq 1 "$runs"); do
	time_ms docker run --rm "$img" true >>"$work/d"
	time_ms srun --script true >>"$work/s"
done
d=$(median <"$work/d"); s=$(median <"$work/s")
mem_trivial=$(peak_kb)

: >"$work/bd" ; : >"$work/bs"
for _ in $(seq 1 "$big_runs"); do
	time_ms docker run --rm "$img" sh -c "$big" >>"$work/bd"
	time_ms srun --script "$big" >>"$work/bs"
done
bd=$(median <"$work/bd"); bs=$(median <"$work/bs")
mem_big=$(peak_kb)

awk -v d="$d" -v s="$s" -v bd="$bd" -v bs="$bs" -v mb="$mb" -v m1="$mem_trivial" -v m2="$mem_big" -v n="$runs" -v bn="$big_runs" 'BEGIN {
	printf "trivial step (median of %d):  docker run %d ms   stevedore run %d ms   ratio %.2fx (target <= 1.30x)\n", n, d, s, s/d
	printf "%d MB of log lines (median of %d): docker run %.1f MB/s   stevedore run %.1f MB/s   throughput ratio %.2f (target >= 0.50)\n", mb, bn, mb*1000/bd, mb*1000/bs, bd/bs
	printf "agent peak RSS: %.1f MB after the trivial steps, %.1f MB after %d MB of log (growth %.1f MB)\n", m1/1024, m2/1024, mb*bn, (m2-m1)/1024
}'
