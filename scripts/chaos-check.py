#!/usr/bin/env python3
"""The checker of scripts/chaos.sh: matches the event_ids of a chaos run's work directory
(`scripts/chaos-check.py /tmp/gradwatch-chaos.XXXXXX`) and prints the counts."""
import glob, json, os, re, sys
w = sys.argv[1]
def events(path):
    out = []
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
produced, run_of = {}, {}
for p in sorted(glob.glob(f"{w}/run-*.out"), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
    n = int(re.findall(r"\d+", os.path.basename(p))[0])
    for e in events(p):
        produced[e["event_id"]] = e
        run_of[e["event_id"]] = n
delivered = {e["event_id"] for e in events(f"{w}/received.jsonl") if "event_id" in e}
dead = set()
for p in glob.glob(f"{w}/disk/spool/*/dead-letter.jsonl"):
    dead |= {e["event_id"] for e in events(p)}
drops = {}
for p in glob.glob(f"{w}/drops-*.txt"):
    for line in open(p):
        m = re.match(r'gradwatch_sink_dropped_total\{sink="mqtt",reason="(\w+)"\} (\d+)', line)
        if m:
            drops[m[1]] = drops.get(m[1], 0) + int(m[2])
lost_at_term = 0
for p in glob.glob(f"{w}/run-*.err"):
    for m in re.finditer(r"(\d+) more could not be written to it", open(p, errors="replace").read()):
        lost_at_term += int(m[1])
# Runs ended by kill -9, and when.
killed = {}
for line in open(f"{w}/actions.log"):
    t, _, run, *what = line.split()
    if " ".join(what) == "kill -9":
        killed[int(run)] = float(t)
# When the disk was full (the events then wait in memory, since the spool cannot take them).
full, since = [], None
for line in open(f"{w}/actions.log"):
    t, _, run, *what = line.split()
    what = " ".join(what)
    if what.startswith("disk filled"):
        since = float(t)
    elif what in ("disk freed", "recovery") and since is not None:
        full.append((since, float(t)))
        since = None
if since is not None:
    full.append((since, float("inf")))
def unix(rfc):
    import datetime
    return datetime.datetime.strptime(rfc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()
def on_full_disk(i):
    t = unix(produced[i]["time"])
    return any(a - 0.5 <= t <= b + 1.5 for a, b in full)
missing = set(produced) - delivered - dead
at_kill = {i for i in missing if run_of[i] in killed}
at_kill_full = {i for i in at_kill if on_full_disk(i)}
other = missing - at_kill
counted = sum(drops.values()) + lost_at_term
dups = sum(1 for _ in events(f"{w}/received.jsonl")) - len(delivered)
actions = {}
for line in open(f"{w}/actions.log"):
    a = " ".join(line.split()[3:])
    a = re.sub(r" \(.*", "", a)
    actions[a] = actions.get(a, 0) + 1
print("\n== chaos result")
print("faults:", ", ".join(f"{k} x{v}" for k, v in sorted(actions.items())))
print(f"events produced (stdout sink, {len(set(run_of.values()))} runs): {len(produced)}")
print(f"delivered over MQTT (unique event_ids): {len(delivered & set(produced))}  (+{dups} duplicates, at-least-once)")
print(f"dead-lettered: {len(dead)}")
print(f"counted drops: {drops} + lost at SIGTERM (disk full) {lost_at_term} = {counted}")
print(f"missing: {len(missing)}: {len(at_kill)} from runs ended by kill -9 ({len(at_kill_full)} of them produced while "
      f"the disk was full, so in memory only), {len(other)} from other runs")
starts = {e["id"] for e in produced.values() if e["event"] == "alert_start"}
ends = {e["id"] for e in produced.values() if e["event"] == "alert_end"}
restarts = sum(1 for e in produced.values() if e["event"] == "alert_end" and e.get("reason") == "restart")
print(f"alerts: {len(starts)} started, {len(starts & ends)} ended ({restarts} with reason restart after a kill -9), "
      f"{len(starts - ends)} never ended")
ok = len(other) <= counted
print(f"every missing event of a run not killed is covered by a counted drop: {'YES' if ok else 'NO'}"
      f" ({len(other)} missing <= {counted} counted)")
open(f"{w}/result.txt", "w").write(json.dumps({"produced": len(produced), "delivered": len(delivered & set(produced)),
    "duplicates": dups, "dead": len(dead), "drops": drops, "lost_at_term": lost_at_term,
    "missing_killed_runs": len(at_kill), "missing_killed_full_disk": len(at_kill_full), "missing_other": len(other), "actions": actions,
    "alerts_started": len(starts), "alerts_never_ended": len(starts - ends), "alert_end_restart": restarts}, indent=1))
sys.exit(0 if ok else 1)
