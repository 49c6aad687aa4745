#!/usr/bin/env bash
# An elastic pipeline (elastic.mode "respawn": the small GPT as 3 stages, one per host)
# across three network namespaces joined by veth pairs to a bridge: troupe launch --nproc 1
# --nodes 2 in the first, troupe node in the other two. While it trains, the link of the
# node in namespace b (stage 1 or 2) is cut (its veth set down) for 5 s, then restored.
#   1. TROUPE_SILENCE_MS=15000, longer than the cut: nobody is counted lost, and the job
#      finishes with all three.
#   2. TROUPE_SILENCE_MS=2000, shorter: the node in b is counted lost, and its place waits.
#      Once the link is back a new troupe node starts in b, joins as a replacement from
#      another machine, takes the place and its stage's state (the standby copy the next
#      host keeps), and the pipeline goes on from the step in flight; the old node in b
#      finds itself out of the job and ends.
# Both runs must train every step; the first must end near the one-process run (the
# order of fp32 sums differs), the second with exactly the first's final loss (the steps
# after the failure run again on the same data), having lost one step. Skips (exit 77)
# with the reason where the machine forbids namespaces.
# Usage: tests/net/netns_pipeline_cut.sh TROUPE_BINARY
set -euo pipefail
troupe=${1:?usage: netns_pipeline_cut.sh TROUPE_BINARY}
tag="trp$$"
work=$(mktemp -d /tmp/troupe-netpipe-XXXXXX)
subnet=10.79.0
source "$(dirname "$0")/netns_lib.sh"

job() {  # job FILE METRICS
  cat > "$1" <<JOB
{"name": "netpipe",
 "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 16}},
 "data": {"dataset": "fortunes"},
 "optimizer": {"adamw": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1}, "grad_clip": 1.0},
 "train": {"batch_size": 16, "steps": 2000, "threads": 3, "sample_tokens": 0, "metrics_file": "$2"},
 "parallel": {"stages": 3, "micro_batches": 4, "transport": "tcp"},
 "elastic": {"mode": "respawn"}}
JOB
}
job "$work/one.json" "$work/one.jsonl"
sed -i 's|"mode": "respawn"|"mode": "off"|' "$work/one.json"
reference_run "$work/one.json"

job_secret netpipe-test
status=0
for silence in 15000 2000; do
  run="$work/s$silence"
  mkdir -p "$run"
  job "$run/job.json" "$run/metrics.jsonl"
  launch_and_cut_b "$run" "$silence" 29521
  if [ "$silence" = 2000 ]; then  # the replacement, from "another machine": b again, a new node
    TROUPE_SILENCE_MS=$silence timeout 240 ip netns exec "${tag}b" "$troupe" node \
      --coordinator $subnet.1:29521 > "$run/node3.log" 2>&1 &
    agents+=($!)
  fi
  wait "$launcher" || { echo "silence $silence: launch failed:"; cat "$run/launch.log"; status=1; continue; }
  wait "${agents[1]}" || { echo "silence $silence: the node in c failed:"; cat "$run/node2.log"; status=1; }
  b_status=0
  wait "${agents[0]}" || b_status=$?
  if [ "$silence" = 2000 ]; then
    wait "${agents[2]}" || { echo "silence $silence: the replacement in b failed:"; cat "$run/node3.log"; status=1; }
  fi
  python3 - "$silence" "$work/one.jsonl" "$run/metrics.jsonl" "$run/events.jsonl" "$run/launch.log" "$b_status" \
    "$work/s15000/metrics.jsonl" <<'PY' || status=1
import json, sys
silence, one, metrics, events, log, b_status, first = sys.argv[1:8]
b_status = int(b_status)
def lines(p):
    return [json.loads(l) for l in open(p) if l.strip()]
ref = [e["loss"] for e in lines(one) if e["event"] == "eval"][-1]
m = lines(metrics)
steps = {e["step"] for e in m if e["event"] == "step"}
final = [e["loss"] for e in m if e["event"] == "eval"][-1]
lost = [e for e in lines(events) if e["event"] == "lost"]
text = open(log).read()
ok = len(steps) == 2000
if silence == "15000":
    ok = ok and not lost and abs(final - ref) < 1e-3 * abs(ref)
    what = f"a 5 s cut inside the silence deadline: nobody lost, final loss {final:.4f} vs one process {ref:.4f}"
else:
    uncut = [e["loss"] for e in lines(first) if e["event"] == "eval"][-1]
    ok = (ok and len(lost) == 1 and lost[0]["slot"] == -1 and "it takes place" in text
          and "1 step lost to failures" in text and b_status != 0 and final == uncut)
    what = (f"a 5 s cut past the 2 s silence deadline: the cut node replaced by a new one, final loss {final:.6f} "
            f"vs the uncut run's {uncut:.6f}")
print(f"silence {silence} ms: {what}; {len(steps)} steps, {len(lost)} lost: {'ok' if ok else 'FAILED'}")
if not ok:
    print(text[-3000:])
    print(open(events).read())
sys.exit(0 if ok else 1)
PY
done
exit $status
