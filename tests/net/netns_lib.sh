# Sourced by the netns tests: three network namespaces ${tag}a, ${tag}b, ${tag}c, each its
# own host with address $subnet.1, .2, .3 on eth0, joined by veth pairs to a bridge in a
# fourth, ${tag}sw. Before sourcing, set tag (short: it prefixes interface names), subnet
# (e.g. 10.77.0) and work (a scratch directory). It sets namespaces=(a b c sw), traps EXIT
# to stop this script's background jobs, delete the namespaces and remove $work, and skips
# the test (exit 77) with the reason where the machine forbids namespaces. The caller's
# $troupe is the binary launch_and_cut_b (below) runs.
namespaces=("${tag}a" "${tag}b" "${tag}c" "${tag}sw")
cleanup() {
  jobs -p | xargs -r kill -9 2>/dev/null || true
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
skip() { echo "SKIP: $*"; exit 77; }

command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
[ "$(id -u)" -eq 0 ] || skip "creating network namespaces needs root"
ip netns add "${tag}sw" 2>"$work/err" || skip "this machine forbids network namespaces: $(cat "$work/err")"
ip -n "${tag}sw" link add br0 type bridge
ip -n "${tag}sw" link set br0 up
for k in 0 1 2; do
  ns="${namespaces[$k]}"
  ip netns add "$ns"
  ip link add "v${tag}$k" type veth peer name "p${tag}$k"
  ip link set "v${tag}$k" netns "$ns"
  ip link set "p${tag}$k" netns "${tag}sw"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "v${tag}$k" name eth0
  ip -n "$ns" addr add "$subnet.$((k + 1))/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "${tag}sw" link set "p${tag}$k" master br0
  ip -n "${tag}sw" link set "p${tag}$k" up
done

# launch_and_cut_b RUN SILENCE PORT: the job RUN/job.json under troupe launch --nproc 1
# --nodes 2 in ${tag}a, listening on $subnet.1:PORT, and troupe node in ${tag}b and
# ${tag}c, all with TROUPE_SILENCE_MS=SILENCE (logs and events under RUN); once
# RUN/metrics.jsonl shows 300 steps, b's link goes down for 5 s, then up again. Sets
# launcher (its pid) and agents (the two nodes' pids).
launch_and_cut_b() {
  local run=$1 silence=$2 port=$3
  TROUPE_SILENCE_MS=$silence timeout 240 ip netns exec "${tag}a" "$troupe" launch --nproc 1 --nodes 2 \
    --listen "$subnet.1:$port" --events "$run/events.jsonl" "$run/job.json" > "$run/launch.log" 2>&1 &
  launcher=$!
  agents=()
  for k in 1 2; do
    TROUPE_SILENCE_MS=$silence timeout 240 ip netns exec "${namespaces[$k]}" "$troupe" node \
      --coordinator "$subnet.1:$port" > "$run/node$k.log" 2>&1 &
    agents+=($!)
  done
  for _ in $(seq 1 1200); do
    [ -f "$run/metrics.jsonl" ] && [ "$(grep -c '"event":"step"' "$run/metrics.jsonl" || true)" -ge 300 ] && break
    sleep 0.05
  done
  ip -n "${tag}b" link set eth0 down
  sleep 5
  ip -n "${tag}b" link set eth0 up
}

# reference_run JSON: the job as one process (troupe train; its metrics go where the job
# says), or exit 1 with its log.
reference_run() { "$troupe" train "$1" --quiet > "$1.log" 2>&1 || { cat "$1.log"; exit 1; }; }

# job_secret NAME: a fresh TROUPE_SECRET for this test's processes.
job_secret() { export TROUPE_SECRET="$1-$$-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"; }

# cut_round RUN SILENCE PORT: launch_and_cut_b, then waits for the launcher and the two
# nodes. Returns 1 (with the log) if the launcher or the node in c failed; sets b_status
# to the node in b's exit status.
cut_round() {
  local run=$1 silence=$2 failed=0
  launch_and_cut_b "$run" "$silence" "$3"
  wait "$launcher" || { echo "silence $silence: launch failed:"; cat "$run/launch.log"; failed=1; }
  wait "${agents[1]}" || { echo "silence $silence: the node in c failed:"; cat "$run/node2.log"; failed=1; }
  b_status=0
  wait "${agents[0]}" || b_status=$?
  return $failed
}
