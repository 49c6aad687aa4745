#!/usr/bin/env bash
# A job across three network namespaces, each its own host with its own address, joined by
# veth pairs to a bridge in a fourth: a GPT of 3 replicas as 3 processes (troupe train
# --rank k --world 3), one per namespace, their links over the veths (TROUPE_HOST = the
# namespace's address), meeting through rank 0's rendezvous store (tcp://10.77.0.1:29500,
# no shared directory). Its per-step losses must match the in-process run of the same job
# to 1e-4. Then the same job again as a launcher would run it across machines: troupe
# launch --nproc 1 --nodes 2 --listen 10.77.0.1:29501 in the first namespace, troupe node
# --coordinator 10.77.0.1:29501 in the other two, their ranks placed by address
# (parallel.hosts); the same losses again. The job says
# "transport": "tcp": the namespaces share one kernel, and shm would find its peers through
# /dev/shm instead of the network under test. Skips (exit 77) with the reason where the
# machine forbids namespaces.
# Usage: tests/net/netns_job.sh TROUPE_BINARY
set -euo pipefail
troupe=${1:?usage: netns_job.sh TROUPE_BINARY}
tag="trp$$"
work=$(mktemp -d /tmp/troupe-netns-XXXXXX)
subnet=10.77.0
source "$(dirname "$0")/netns_lib.sh"

cat > "$work/job.json" <<JOB
{"name": "netns",
 "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 32, "vocab": 256}},
 "data": {"dataset": "fortunes"},
 "optimizer": {"adamw": {"lr": 1e-3, "weight_decay": 0.1}, "grad_clip": 1.0},
 "train": {"batch_size": 6, "steps": 10, "threads": 3, "sample_tokens": 0, "metrics_file": "$work/METRICS"},
 "parallel": {"stages": 1, "replicas": 3, "transport": "tcp"}}
JOB
sed "s|METRICS|one.jsonl|" "$work/job.json" > "$work/one.json"
sed "s|METRICS|three.jsonl|" "$work/job.json" > "$work/three.json"
# The launcher's job places its processes by address (parallel.hosts), against the order
# of the namespaces: the node in b (10.77.0.2) must become process 2, the one in c process 1.
sed "s|METRICS|nodes.jsonl|; s|\"transport\": \"tcp\"|\"transport\": \"tcp\", \"hosts\": [\"10.77.0.1\", \"10.77.0.3\", \"10.77.0.2\"]|" \
  "$work/job.json" > "$work/nodes.json"
grep -q '"hosts"' "$work/nodes.json" || { echo "the job file did not get its parallel.hosts"; exit 1; }
reference_run "$work/one.json"

export TROUPE_SECRET="netns-test-$$-$RANDOM-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"
pids=()
for k in 0 1 2; do
  TROUPE_HOST="10.77.0.$((k + 1))" timeout 120 ip netns exec "${namespaces[$k]}" "$troupe" train "$work/three.json" \
    --quiet --rank "$k" --world 3 --rendezvous tcp://10.77.0.1:29500 --group 4242 > "$work/rank$k.log" 2>&1 &
  pids+=($!)
done
failed=0
for k in 0 1 2; do wait "${pids[$k]}" || { echo "rank $k failed:"; cat "$work/rank$k.log"; failed=1; }; done
[ "$failed" -eq 0 ] || exit 1

# The launcher in namespace a, a node agent in each of b and c.
timeout 120 ip netns exec "${tag}a" "$troupe" launch --nproc 1 --nodes 2 --listen 10.77.0.1:29501 "$work/nodes.json" \
  --quiet > "$work/launch.log" 2>&1 &
launcher=$!
agents=()
for k in 1 2; do
  timeout 120 ip netns exec "${namespaces[$k]}" "$troupe" node --coordinator 10.77.0.1:29501 > "$work/node$k.log" 2>&1 &
  agents+=($!)
done
wait "$launcher" || { echo "launch failed:"; cat "$work/launch.log"; failed=1; }
for k in 1 2; do wait "${agents[$((k - 1))]}" || { echo "node $k failed:"; cat "$work/node$k.log"; failed=1; }; done
[ "$failed" -eq 0 ] || exit 1
grep -q "as process 2 of 3 (this host: 10.77.0.2)" "$work/node1.log" || { cat "$work/node1.log"; exit 1; }
grep -q "as process 1 of 3 (this host: 10.77.0.3)" "$work/node2.log" || { cat "$work/node2.log"; exit 1; }

python3 - "$work/one.jsonl" "$work/three.jsonl" "$work/nodes.jsonl" <<'PY'
import json, sys
def losses(path):
    return [json.loads(l)["loss"] for l in open(path) if '"event":"step"' in l]
a = losses(sys.argv[1])
ok = len(a) == 10
for name, path in (("3 processes by rank", sys.argv[2]), ("launch + 2 nodes", sys.argv[3])):
    b = losses(path)
    if len(b) != len(a):
        print(f"{name}: {len(b)} steps, expected {len(a)}"); ok = False; continue
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"3 namespaces ({name}) vs one process: {len(a)} steps, worst relative loss difference {worst:.2e}")
    ok = ok and worst <= 1e-4
sys.exit(0 if ok else 1)
PY
