package agent

// Learn mode on the node.
//
// The kernel reports every exec of a Learn-bound cgroup that its allowlist does not
// cover, so a workload that runs /bin/sh 10,000 times sends 10,000 identical events.
// What the controller needs is the set of (pod, container, executable) seen, so this
// file turns the stream into one event per member of that set:
//
//   - learnSuppressed drops a Learn event whose (pod uid, container, executable) was
//     already reported, from a bounded LRU set (learnSeenSize).
//   - An event that cannot be attributed yet is held, per pod (bounded), and reported
//     when it can: a container cgroup whose name is not known (the binding push carries
//     no container ids; names come later from the pod status, and a container's first
//     execs, its entrypoint or a whole init container, happen exactly then), or a pod
//     adopted at start-up whose name is not known until the next push or backstop pass.
//   - When a cgroup of a Learn pod is bound, and for every Learn pod adopted at start-up,
//     the processes already running in the pod's cgroups are reported too
//     (cgroup.procs, recursively, and /proc/<pid>/exe), so containers that started
//     before learning are included.
//   - Every learnResync the set is replayed to the subscribers (paced), for pods still
//     in Learn mode. Events reach only the watchers connected at that moment, and a
//     watcher that lost one (queue full, stream broken) would never see it again behind
//     the dedupe. The controller merges sets, so a replay that brings nothing new costs
//     it no write.
//
// All of it is guarded by Agent.mu, like the pod table it reads. Untrusted paths (memfd,
// deleted or too deep files) are logged once and never reported: they are never allowed,
// so there is nothing to propose.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

const (
	// learnSeenSize bounds the (pod uid, container, executable) set. An entry took 303
	// bytes of Go heap with 52-byte paths (LRU element, map slot, path; the uid and
	// container strings are shared with the pod table), so a full set is about 10 MB
	// (measured 2026-11-25: heap growth after filling the set, in a throwaway test).
	// Beyond it the least recently seen entry is forgotten: its next exec is reported
	// again (harmless, the controller merges sets) and it is no longer replayed.
	learnSeenSize = 32768
	// learnHeldPods bounds the pods with held events and learnHeldPerPod the executables
	// held for one pod. Beyond them events are dropped (logged once per pod); what still
	// runs is found by the next scan.
	learnHeldPods   = 1024
	learnHeldPerPod = 1024
	// learnScanMaxPIDs and learnScanMaxDepth bound one scan of a pod's cgroups, which
	// runs under Agent.mu: a fork bomb in a learning pod must not stall binding.
	learnScanMaxPIDs  = 4096
	learnScanMaxDepth = 8
	// learnResync is how often the learnt set is replayed. A controller that connects
	// after the agent started sees what the agent learnt before within this period.
	learnResync = 10 * time.Minute
	// learnReplayBatch events are published every learnReplayPause during a replay
	// (1,280 events a second), so that subscriber queues (SubscriberBuffer, 256 by
	// default) are not overrun.
	learnReplayBatch = 64
	learnReplayPause = 50 * time.Millisecond
)

// procDir is where the scan reads /proc/<pid>/exe.
const procDir = "/proc"

type learnKey struct{ uid, container, path string }

// learnState is the Learn bookkeeping of an Agent. Guarded by Agent.mu; its zero value
// is ready (the caches are made on first use).
type learnState struct {
	seen *lru.Cache[learnKey, struct{}]
	held *lru.Cache[string, *heldPod] // pod uid -> events not attributable yet
}

// heldPod is what a pod ran before it could be reported.
type heldPod struct {
	paths map[heldWhere]map[string]struct{}
	n     int
	full  bool // learnHeldPerPod reached (and logged)
}

// heldWhere says where a held executable ran: a container known by name, a container
// known by id only, or (both empty) the pod cgroup itself.
type heldWhere struct{ container, cid string }

// learnLocked returns the agent's Learn state, creating its caches on first use.
func (a *Agent) learnLocked() *learnState {
	l := &a.learn
	if l.seen == nil {
		// lru.New fails only for a size <= 0; the sizes are positive constants.
		l.seen, _ = lru.New[learnKey, struct{}](learnSeenSize)
		l.held, _ = lru.New[string, *heldPod](learnHeldPods)
	}
	return l
}

// firstSeen records key and reports whether it is new.
func (l *learnState) firstSeen(key learnKey) bool {
	if _, ok := l.seen.Get(key); ok {
		return false
	}
	l.seen.Add(key, struct{}{})
	return true
}

// holdLocked keeps path until p's event for it can be attributed.
func (a *Agent) holdLocked(p *podState, where heldWhere, path string) {
	l := a.learnLocked()
	h, ok := l.held.Get(p.uid)
	if !ok {
		h = &heldPod{paths: map[heldWhere]map[string]struct{}{}}
		l.held.Add(p.uid, h)
	}
	set := h.paths[where]
	if _, dup := set[path]; dup {
		return
	}
	if h.n >= learnHeldPerPod {
		if !h.full {
			h.full = true
			a.podLog(p).Warn("learn: too many executables before the pod's container names are known; the rest are reported when they run again",
				zap.Int("max_held", learnHeldPerPod))
		}
		return
	}
	if set == nil {
		set = map[string]struct{}{}
		h.paths[where] = set
	}
	set[path] = struct{}{}
	h.n++
}

// attribution says who ran an executable: the container's name when known, else the
// id of its cgroup's container (cid); both empty for the pod cgroup itself.
func (p *podState) attribution(where heldWhere) (container string, ok bool) {
	if p.name == "" {
		return "", false // adopted, not pushed since: no namespace and name to report
	}
	if where.container != "" || where.cid == "" {
		return where.container, true
	}
	name, ok := p.names[where.cid]
	return name, ok
}

// learnSuppressed reports whether fanOutEvents must not publish ev: a Learn event
// already reported for its pod, container and executable, one held until it can be
// attributed, or one whose file has no trustworthy path.
func (a *Agent) learnSuppressed(ev enforcer.Event) bool {
	if ev.Action != enforcer.ActionLearned {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.learnLocked()
	// The same resolution as execEvent: the owner of the binding that decided, then,
	// for a pod binding, the container cgroup the task runs in.
	key := learnKey{uid: "cgroup-" + strconv.FormatUint(ev.BoundCgroupID, 10), path: ev.Path}
	o, owned := a.owners[ev.BoundCgroupID]
	p := a.pods[o.uid]
	if !owned {
		p = nil
	}
	if p != nil {
		where := heldWhere{container: o.container}
		if where.container == "" {
			for cid, cg := range p.containers {
				if cg == ev.CgroupID {
					where.cid = cid
				}
			}
		}
		container, ok := p.attribution(where)
		key.uid, key.container = p.uid, container
		if !ok && ev.Flags&enforcer.FlagUntrusted == 0 {
			if !a.learnDropsLoaderLocked(p, ev) {
				a.holdLocked(p, where, ev.Path)
			}
			return true
		}
	}
	if ev.Flags&enforcer.FlagUntrusted != 0 {
		if l.firstSeen(key) {
			a.log.Warn("learn: executed a file without a trustworthy path; it cannot be allowlisted, and Monitor or Protect mode will report or deny it",
				zap.String("pod_uid", key.uid), zap.String("container", key.container), zap.String("executable", ev.Path),
				zap.Stringer("flags", ev.Flags), zap.Uint32("pid", ev.PID))
		}
		return true
	}
	if _, seen := l.seen.Get(key); seen {
		return true
	}
	// Checked once per (pod, container, executable): repeats are suppressed above.
	if a.learnDropsLoaderLocked(p, ev) {
		return true
	}
	return !l.firstSeen(key)
}

// learnDropsLoaderLocked reports whether a Learn event must not be proposed because
// its file is a dynamic loader (loaders.go), read in the root of the process that ran
// it or of another process of its cgroup. When every one of them has exited (a
// short-lived init container) the file cannot be read: the event is proposed, counted
// as learn_unverified, and the agent's inspection of Protect pods refuses the path if
// it is a loader.
func (a *Agent) learnDropsLoaderLocked(p *podState, ev enforcer.Event) bool {
	check := a.learnFileCheck
	if check == nil {
		check = a.learnIsLoader
	}
	loader, known := check(p, ev.PID, ev.CgroupID, ev.Path)
	if known && !loader {
		return false
	}
	ns, policy := "", ""
	if p != nil {
		ns, policy = p.namespace, string(p.policy)
	}
	if !known {
		a.metrics.loaderCheck(ns, policy, "learn_unverified")
		return false
	}
	a.metrics.loaderCheck(ns, policy, "learn_dropped")
	a.log.Warn("learn: executed a dynamic loader directly; it is never proposed (it would run any file)",
		zap.String("namespace", ns), zap.String("policy", policy), zap.String("executable", ev.Path), zap.Uint32("pid", ev.PID))
	return true
}

// learnBoundLocked runs after a cgroup of pod p was bound. In Learn mode it reports
// what runs in the pod now, and what became attributable (a container's name or the
// pod's name is now known).
func (a *Agent) learnBoundLocked(p *podState) {
	if a.policyModeLocked(p.policy) != enforcer.ModeLearn {
		return
	}
	// Scan first: a running process is reported with its pid.
	a.scanLearnLocked(p)
	a.releaseHeldLocked(p)
}

func (a *Agent) releaseHeldLocked(p *podState) {
	l := a.learnLocked()
	h, ok := l.held.Peek(p.uid)
	if !ok {
		return
	}
	for where, paths := range h.paths {
		container, ok := p.attribution(where)
		if !ok {
			continue
		}
		for path := range paths {
			a.reportLearntLocked(p, container, path, 0, 0)
		}
		h.n -= len(paths)
		delete(h.paths, where)
	}
	if len(h.paths) == 0 {
		l.held.Remove(p.uid)
	}
}

// learnAdoptedLocked scans every adopted pod in Learn mode (agent start-up). Their
// names are not known yet, so what runs is held until the first push or backstop pass.
func (a *Agent) learnAdoptedLocked() {
	for _, p := range a.pods {
		if p.podCgroup != 0 && a.policyModeLocked(p.policy) == enforcer.ModeLearn {
			a.scanLearnLocked(p)
		}
	}
}

func (a *Agent) policyModeLocked(key enforcer.PolicyKey) enforcer.Mode {
	for _, lp := range a.enf.Policies() {
		if lp.Key == key {
			return lp.Mode
		}
	}
	return 0
}

// reportLearntLocked publishes one Learn event, unless its key was reported before.
func (a *Agent) reportLearntLocked(p *podState, container, path string, pid uint32, cg uint64) {
	if !a.learnLocked().firstSeen(learnKey{uid: p.uid, container: container, path: path}) {
		return
	}
	a.subs.publish(a.learnEvent(p, container, path, pid, cg))
}

func (a *Agent) learnEvent(p *podState, container, path string, pid uint32, cg uint64) *agentv1.ExecEvent {
	return &agentv1.ExecEvent{
		Time: timestamppb.Now(), Node: a.opts.NodeName, Namespace: p.namespace, Pod: p.name, Container: container,
		Policy: string(p.policy), Mode: agentv1.Mode_MODE_LEARN, Action: agentv1.Action_ACTION_ALLOWED_LEARN,
		Pid: pid, Executable: path, CgroupId: cg, Count: 1,
	}
}

// scanLearnLocked reports the executables of the processes running in the pod's
// cgroups, or holds them while they cannot be attributed.
func (a *Agent) scanLearnLocked(p *podState) {
	dir := a.layout.PodCgroupPath(p.uid, p.qos)
	if dir == "" {
		return
	}
	s := &learnScan{a: a, p: p, budget: learnScanMaxPIDs}
	s.walk(dir, heldWhere{}, 0)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			a.podLog(p).Warn("learn scan: list container cgroups", zap.Error(err))
		}
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		where := heldWhere{}
		if _, cid, ok := a.layout.ParseContainerCgroup(e.Name()); ok {
			where.cid = cid
		}
		s.walk(filepath.Join(dir, e.Name()), where, 1)
	}
	if s.budget <= 0 {
		a.podLog(p).Warn("learn scan: too many processes; the rest are reported when they exec", zap.Int("max_pids", learnScanMaxPIDs))
	}
}

// learnScan is one walk over a pod's cgroups.
type learnScan struct {
	a      *Agent
	p      *podState
	budget int
}

// walk reports the processes of dir and, unless it is the pod cgroup (depth 0, whose
// children the caller walks one by one), of the cgroups below it.
func (s *learnScan) walk(dir string, where heldWhere, depth int) {
	if s.budget <= 0 || depth > learnScanMaxDepth {
		return
	}
	pids, err := cgroups.PIDs(dir)
	if err != nil {
		return // removed meanwhile
	}
	container, attributed := s.p.attribution(where)
	var cg uint64
	if len(pids) > 0 && attributed {
		if cg, err = cgroups.ID(dir); err != nil {
			return
		}
	}
	for _, pid := range pids {
		if s.budget <= 0 {
			return
		}
		s.budget--
		path, ok := executableOf(pid)
		if ok {
			// A long-running "ld.so prog" has the loader as its executable.
			loader, known := s.a.learnIsLoader(nil, uint32(pid), 0, path)
			ok = known && !loader
		}
		switch {
		case !ok:
		case attributed:
			s.a.reportLearntLocked(s.p, container, path, uint32(pid), cg)
		default:
			s.a.holdLocked(s.p, where, path)
		}
	}
	if depth == 0 {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			s.walk(filepath.Join(dir, e.Name()), where, depth+1)
		}
	}
}

// executableOf returns the path of the file process pid executes, if the process
// executed it in its container and it can be allowlisted. Kernel threads have no file,
// an exited process none any more, and a deleted file's path names nothing the kernel
// would allow. A process that has not executed anything since it entered the cgroup (a
// fork waiting to exec, the runtime's init waiting to start the entrypoint) still runs a
// binary from outside the container: its file is not at that path in the process's
// root, or it is its parent's (a parent in the pod is reported on its own).
func executableOf(pid int) (string, bool) {
	dir := filepath.Join(procDir, strconv.Itoa(pid))
	path, err := os.Readlink(filepath.Join(dir, "exe"))
	if err != nil || strings.HasSuffix(path, " (deleted)") || strings.HasSuffix(path, "/") {
		return "", false
	}
	if v1alpha1.ValidateExecutable(path) != nil || !sameFileInRoot(dir, path) {
		return "", false
	}
	if ppid, ok := parentPID(dir); ok {
		if parent, err := os.Readlink(filepath.Join(procDir, strconv.Itoa(ppid), "exe")); err == nil && parent == path {
			return "", false
		}
	}
	return path, true
}

// sameFileInRoot reports whether path, in the root of the process whose /proc
// directory is dir, is the file the process executes.
func sameFileInRoot(dir, path string) bool {
	var exe, inRoot unix.Stat_t
	return unix.Stat(filepath.Join(dir, "exe"), &exe) == nil && unix.Stat(filepath.Join(dir, "root")+path, &inRoot) == nil &&
		exe.Dev == inRoot.Dev && exe.Ino == inRoot.Ino
}

// runsInOwnRoot reports whether process pid executed its file in its own root
// directory, so that its root is its container's (a runtime's init still
// running the runtime's binary is not; see executableOf).
func runsInOwnRoot(pid int) bool {
	dir := filepath.Join(procDir, strconv.Itoa(pid))
	path, err := os.Readlink(filepath.Join(dir, "exe"))
	return err == nil && strings.HasPrefix(path, "/") && !strings.HasSuffix(path, " (deleted)") && sameFileInRoot(dir, path)
}

// parentPID reads the parent's pid from <dir>/stat: "pid (comm) state ppid ...", where
// comm may contain spaces and parentheses, hence the last ")".
func parentPID(dir string) (int, bool) {
	data, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil && ppid > 0
}

// resyncLearnt replays the learnt set every learnResync until ctx ends.
func (a *Agent) resyncLearnt(ctx context.Context) {
	every(ctx, learnResync, func() { a.replayLearnt(ctx) })
}

// replayLearnt publishes the learnt set of the pods still in Learn mode, paced, and
// returns how many events it published.
func (a *Agent) replayLearnt(ctx context.Context) int {
	events := a.learntEvents()
	for i, ev := range events {
		if i > 0 && i%learnReplayBatch == 0 {
			select {
			case <-ctx.Done():
				return i
			case <-time.After(learnReplayPause):
			}
		}
		a.subs.publish(ev)
	}
	return len(events)
}

func (a *Agent) learntEvents() []*agentv1.ExecEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.learnLocked()
	modes := map[enforcer.PolicyKey]enforcer.Mode{}
	for _, lp := range a.enf.Policies() {
		modes[lp.Key] = lp.Mode
	}
	var out []*agentv1.ExecEvent
	for _, k := range l.seen.Keys() {
		p := a.pods[k.uid]
		if p == nil || p.name == "" || modes[p.policy] != enforcer.ModeLearn {
			continue
		}
		out = append(out, a.learnEvent(p, k.container, k.path, 0, 0))
	}
	return out
}
