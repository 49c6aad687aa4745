#!/usr/bin/env bash
# An elastic data-parallel job (elastic.mode "respawn", the Fashion-MNIST MLP as 3
# replicas) across three network namespaces joined by veth pairs to a bridge: troupe launch
# --nproc 1 --nodes 2 in the first, troupe node in the other two. While it trains, the link
# of the node in namespace b is cut (its veth set down) for 5 s, then restored.
#   1. TROUPE_SILENCE_MS=15000, longer than the cut: nobody is counted lost; TCP delivers
#      what was held back once the link is up, and the job finishes with all three.
#   2. TROUPE_SILENCE_MS=2000, shorter: the node in b is counted lost (its links and its
#      control connection went silent); the other two go on as a view of 2 without
#      restarting, the job finishes, and the node in b, back on the network, finds itself
#      out of the job and ends.
# In both: the launcher exits 0, every step is trained, at most one step of work is lost,
# and the final test loss is within 0.05 of the one-process run's. Skips (exit 77) with the
# reason where the machine forbids namespaces.
# Usage: tests/net/netns_link_cut.sh TROUPE_BINARY
set -euo pipefail
troupe=${1:?usage: netns_link_cut.sh TROUPE_BINARY}
tag="trc$$"
work=$(mktemp -d /tmp/troupe-netcut-XXXXXX)
subnet=10.78.0
source "$(dirname "$0")/netns_lib.sh"

job() {  # job FILE METRICS
  cat > "$1" <<JOB
{"name": "netcut",
 "model": {"mlp": {"widths": [784, 128, 64, 10], "activation": "relu"}},
 "data": {"dataset": "fashion_mnist"},
 "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}},
 "train": {"batch_size": 96, "steps": 2500, "threads": 3, "metrics_file": "$2"},
 "parallel": {"replicas": 3, "transport": "tcp"},
 "elastic": {"mode": "respawn", "min_workers": 2}}
JOB
}
job "$work/one.json" "$work/one.jsonl"
sed -i 's|"replicas": 3|"replicas": 1|; s|"mode": "respawn", "min_workers": 2|"mode": "off"|' "$work/one.json"
reference_run "$work/one.json"

job_secret netcut-test
status=0
for silence in 15000 2000; do
  run="$work/s$silence"
  mkdir -p "$run"
  job "$run/job.json" "$run/metrics.jsonl"
  cut_round "$run" "$silence" 29511 || { status=1; continue; }
  python3 - "$silence" "$work/one.jsonl" "$run/metrics.jsonl" "$run/events.jsonl" "$run/launch.log" "$b_status" <<'PY' || status=1
import json, sys
silence, one, metrics, events, log, b_status = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
def lines(p):
    return [json.loads(l) for l in open(p) if l.strip()]
ref = [e["loss"] for e in lines(one) if e["event"] == "eval"][-1]
m = lines(metrics)
steps = {e["step"] for e in m if e["event"] == "step"}
final = [e["loss"] for e in m if e["event"] == "eval"][-1]
ev = lines(events)
lost = [e for e in ev if e["event"] == "lost"]
text = open(log).read()
ok = len(steps) == 2500 and abs(final - ref) < 0.05
if silence == "15000":
    ok = ok and not lost
    what = "a 5 s cut inside the silence deadline: nobody lost"
else:
    # Only the cut node (process 2 or 1, whichever b became) is lost; nothing respawned for a node from elsewhere.
    ok = ok and len(lost) == 1 and lost[0]["slot"] == -1 and "1 step lost to failures" in text and b_status != 0
    what = "a 5 s cut past the 2 s silence deadline: the cut node dropped, the others went on"
print(f"silence {silence} ms: {what}: {len(steps)} steps, {len(lost)} lost, final test loss {final:.4f} vs one process "
      f"{ref:.4f}: {'ok' if ok else 'FAILED'}")
if not ok:
    print(text[-3000:])
    print(open(events).read())
sys.exit(0 if ok else 1)
PY
done
exit $status
