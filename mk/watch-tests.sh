#!/usr/bin/env bash
# watch-tests.sh CMD...: runs CMD (go test) and, if it fails, prints last what
# every test process was doing at the latest snapshot: one line per process
# (state, kernel wait channel, age) and its threads grouped by state and wait
# channel. A hung test is killed by go test with a goroutine dump that ends
# wherever the dump ends; CI shows the tail of the log, so the summary of
# who waits on what (a stopped gate, a fanotify permission wait, a vfork)
# must come after it.
set -u
every=${WATCH_EVERY:-30}
snap=$(mktemp)
trap 'rm -f "$snap" "$snap.new"' EXIT

snapshot() {
	echo "snapshot at $(date -u +%H:%M:%S)"
	for d in /proc/[0-9]*; do
		comm=$(cat "$d/comm" 2>/dev/null) || continue
		case "$comm" in
		*.test | execgate-* | kube-* | etcd) ;;
		*) continue ;;
		esac
		read -r _ _ state _ < "$d/stat" 2>/dev/null || continue
		pid=${d#/proc/}
		age=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
		threads=$(for t in "$d"/task/*; do
			s=$(awk '{print $3}' "$t/stat" 2>/dev/null)
			w=$(cat "$t/wchan" 2>/dev/null)
			echo "$s:${w:-0}"
		done | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
		echo "$pid $comm state $state age ${age}s ppid $(awk '{print $4}' "$d/stat") threads: $threads"
	done
}

(
	while sleep "$every"; do
		snapshot > "$snap.new" 2>/dev/null && mv "$snap.new" "$snap"
	done
) &
watcher=$!
"$@"
rc=$?
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
if [ "$rc" -ne 0 ] && [ -s "$snap" ]; then
	echo "== $* failed (exit $rc); test processes at the last snapshot (every ${every}s; state T = stopped, D = uninterruptible; thread count × state:wait channel):"
	cat "$snap"
fi
exit "$rc"
