#!/usr/bin/env bash
# A synchronous parameter-shard job with elastic.mode "respawn" (3 workers x 3 shards, each
# shard's standby copy in the next process) across three network namespaces joined by veth
# pairs to a bridge: troupe launch --nproc 1 --nodes 2 in the first, troupe node in the
# other two. While it trains, the link of the node in namespace b is cut (its veth set
# down) for 5 s, then restored.
#   1. TROUPE_SILENCE_MS=15000, longer than the cut: nobody is counted lost; TCP delivers
#      what was held back once the link is up, and the job ends with the one-process run's
#      final loss (the synchronous rule gives the same bits over processes).
#   2. TROUPE_SILENCE_MS=2000, shorter: the node in b is counted lost; its shard moves to
#      its standby copy in the next process, the other two go on without restarting, and
#      the node in b, back on the network, finds itself out of the job and ends.
# In both: the launcher exits 0, every step is logged, every shard ends at the last step's
# version (no update lost), and the final test loss is within 0.05 of the one-process
# run's. Skips (exit 77) with the reason where the machine forbids namespaces.
# Usage: tests/net/netns_shards_cut.sh TROUPE_BINARY
set -euo pipefail
troupe=${1:?usage: netns_shards_cut.sh TROUPE_BINARY}
tag="trs$$"
work=$(mktemp -d /tmp/troupe-netshards-XXXXXX)
subnet=10.80.0
source "$(dirname "$0")/netns_lib.sh"

steps=2500
job() {  # job FILE METRICS
  cat > "$1" <<JOB
{"name": "netshards",
 "model": {"mlp": {"widths": [784, 128, 64, 10], "activation": "relu"}},
 "data": {"dataset": "fashion_mnist"},
 "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}},
 "train": {"batch_size": 96, "steps": $steps, "threads": 1, "metrics_file": "$2"},
 "policy": {"name": "sync", "workers": 3, "shards": 3},
 "parallel": {"transport": "tcp"},
 "elastic": {"mode": "respawn"}}
JOB
}
job "$work/one.json" "$work/one.jsonl"
sed -i 's|"mode": "respawn"|"mode": "off"|' "$work/one.json"
reference_run "$work/one.json"

job_secret netshards-test
status=0
for silence in 15000 2000; do
  run="$work/s$silence"
  mkdir -p "$run"
  job "$run/job.json" "$run/metrics.jsonl"
  cut_round "$run" "$silence" 29531 || { status=1; continue; }
  python3 - "$silence" "$steps" "$work/one.jsonl" "$run/metrics.jsonl" "$run/events.jsonl" "$run/launch.log" \
    "$b_status" <<'PY' || status=1
import json, sys
silence, steps, one, metrics, events, log, b_status = sys.argv[1:8]
steps, b_status = int(steps), int(b_status)
def lines(p):
    return [json.loads(l) for l in open(p) if l.strip()]
ref = [e["loss"] for e in lines(one) if e["event"] == "eval"][-1]
m = lines(metrics)
logged = {e["step"] for e in m if e["event"] == "step"}
versions = [e["version"] for e in m if e["event"] == "shard"]
final = [e["loss"] for e in m if e["event"] == "eval"][-1]
lost = [e for e in lines(events) if e["event"] == "lost"]
moved = [e for e in m if e["event"] == "moved"]
text = open(log).read()
ok = len(logged) == steps and versions == [steps] * 3
if silence == "15000":
    ok = ok and not lost and not moved and abs(final - ref) <= 1e-4 * abs(ref)
    what = f"a 5 s cut inside the silence deadline: nobody lost, final loss {final:.6f} vs one process {ref:.6f}"
else:
    ok = (ok and len(lost) == 1 and lost[0]["slot"] == -1 and len(moved) == 1 and b_status != 0
          and abs(final - ref) < 0.05)
    what = (f"a 5 s cut past the 2 s silence deadline: the cut node lost, shard {moved[0]['shard'] if moved else '?'} "
            f"moved to its copy, final loss {final:.4f} vs one process {ref:.4f}")
print(f"silence {silence} ms: {what}; {len(logged)} steps, shard versions {versions}, {len(lost)} lost: "
      f"{'ok' if ok else 'FAILED'}")
if not ok:
    print(text[-3000:])
    print(open(events).read())
sys.exit(0 if ok else 1)
PY
done
exit $status
