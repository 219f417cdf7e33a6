package agent

// Dynamic loaders at allowed paths (issue 14, item 3).
//
// "ld.so /any/file" runs a file the kernel never checks: only the loader is exec'd. The
// names of the usual loaders are refused everywhere (internal/execpath), but a name list
// is never complete (glibc before 2.34 installs ld-2.31.so, Nix keeps the loader under
// /nix/store, a prefix rule covers whatever its directory holds). So the agent looks at
// what the allowed files are, in the root file system of the containers that run under
// the policy:
//
//   - For every pod bound to a Monitor or Protect policy, each container root is
//     inspected once per policy version: through a process of the pod that executed a
//     file in its own root (executableOf, the rule Learn trusts), every exact path of the
//     policy is opened in that root (no symbolic link followed, as the kernel names files)
//     and every prefix rule's directory is walked (bounded), and each executable is
//     checked by content (nodeagent/loaders).
//   - A path whose file is a loader is refused for the policy on this node: its entries
//     are deleted from every slot of the loaded version (enforcer.RefusePaths) and left
//     out of every later version. A prefix rule that covers a loader is refused whole:
//     the kernel has no "allow this directory but that file" rule, and refusing fails
//     closed. Each refusal is logged, counted (execgate_agent_loaders_refused_total) and
//     reported as a Warning Event LoaderRefused on the pod.
//   - Learn does not propose a loader: learnSuppressed checks the file of a Learn event in
//     the root of the process that ran it (or of another process of its cgroup) and drops
//     it when it is a loader. When no such process is left (a short-lived init container)
//     the event is proposed, counted as learn_unverified: the inspection above refuses it
//     if a Protect pod ever allows it.
//
// Inspection runs in its own goroutine (checkLoaders), every LoaderCheckInterval and
// right after a binding, and reads files without Agent.mu: only the snapshot of what to
// inspect and the refusals are taken under it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/loaders"
)

// ReasonLoaderRefused is the reason of the Warning Event on a pod whose policy allows
// a file that is a dynamic loader in one of its containers.
const ReasonLoaderRefused = "LoaderRefused"

const (
	// loaderPrefixScanLimit bounds the directory entries visited below one prefix rule.
	loaderPrefixScanLimit = 4096
	// loaderScanMaxPIDs bounds the processes looked at per pod and inspection.
	loaderScanMaxPIDs = 1024
)

// rootID identifies a container's root directory (the overlay mount of its image).
type rootID struct{ dev, ino uint64 }

// loaderState is the agent's record of loader refusals. Guarded by Agent.mu.
type loaderState struct {
	// sources is the last applied version of each policy, before refusals: what a
	// container root is inspected against.
	sources map[enforcer.PolicyKey]enforcer.PolicyVersion
	// refused holds, per policy, the paths refused on this node and why.
	refused map[enforcer.PolicyKey]map[string]string
	// checked records, per pod uid, the container roots inspected and at which
	// version of the pod's policy.
	checked map[string]map[rootID]uint64
	// incomplete remembers the prefix rules whose walk hit the bound (logged once).
	incomplete map[enforcer.PolicyKey]map[string]bool
}

func (l *loaderState) init() {
	l.sources = map[enforcer.PolicyKey]enforcer.PolicyVersion{}
	l.refused = map[enforcer.PolicyKey]map[string]string{}
	l.checked = map[string]map[rootID]uint64{}
	l.incomplete = map[enforcer.PolicyKey]map[string]bool{}
}

// withoutRefusedLocked returns pv without the paths refused for its policy.
func (a *Agent) withoutRefusedLocked(pv enforcer.PolicyVersion) enforcer.PolicyVersion {
	refused := a.loaders.refused[pv.Key]
	if len(refused) == 0 {
		return pv
	}
	out := pv
	out.Containers = make(map[string]enforcer.Rules, len(pv.Containers))
	for name, r := range pv.Containers {
		out.Containers[name] = enforcer.Rules{Paths: slices.DeleteFunc(slices.Clone(r.Paths), func(p string) bool {
			_, gone := refused[p]
			return gone
		})}
	}
	return out
}

// wakeLoaderCheck asks checkLoaders for an inspection now (a binding was made).
func (a *Agent) wakeLoaderCheck() {
	select {
	case a.loaderWake <- struct{}{}:
	default:
	}
}

// checkLoaders inspects the roots of Monitor and Protect pods until ctx ends.
func (a *Agent) checkLoaders(ctx context.Context) {
	t := time.NewTicker(a.opts.LoaderCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.loaderWake:
		}
		a.checkLoadersOnce()
	}
}

// loaderJob is one pod to inspect, copied out of the pod table.
type loaderJob struct {
	uid, namespace, name string
	dir                  string // the pod cgroup
	key                  enforcer.PolicyKey
	version              uint64
	exact, prefixes      []string
	checked              map[rootID]uint64
}

// loaderFinding is a refused path and why, found in one pod.
type loaderFinding struct {
	job          *loaderJob
	path, reason string
}

// checkLoadersOnce inspects every container root not inspected at its pod's current
// policy version, and refuses the loaders found.
func (a *Agent) checkLoadersOnce() {
	jobs := a.loaderJobs()
	var findings []loaderFinding
	checked := map[string]map[rootID]uint64{}
	for _, j := range jobs {
		roots := a.inspectPod(j, &findings)
		if len(roots) > 0 {
			checked[j.uid] = roots
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for uid, roots := range checked {
		if a.pods[uid] == nil {
			continue
		}
		if a.loaders.checked[uid] == nil {
			a.loaders.checked[uid] = map[rootID]uint64{}
		}
		for r, v := range roots {
			a.loaders.checked[uid][r] = v
		}
	}
	for _, f := range findings {
		a.refuseLoaderLocked(f)
	}
}

func (a *Agent) loaderJobs() []*loaderJob {
	a.mu.Lock()
	defer a.mu.Unlock()
	modes := map[enforcer.PolicyKey]enforcer.Mode{}
	for _, lp := range a.enf.Policies() {
		modes[lp.Key] = lp.Mode
	}
	var jobs []*loaderJob
	for uid, p := range a.pods {
		src, ok := a.loaders.sources[p.policy]
		if !ok || p.podCgroup == 0 || (modes[p.policy] != enforcer.ModeMonitor && modes[p.policy] != enforcer.ModeProtect) {
			continue
		}
		j := &loaderJob{uid: uid, namespace: p.namespace, name: p.name, dir: a.layout.PodCgroupPath(p.uid, p.qos),
			key: p.policy, version: src.Version, checked: cloneMap(a.loaders.checked[uid])}
		seen := map[string]bool{}
		for _, r := range src.Containers {
			for _, path := range r.Paths {
				if seen[path] {
					continue
				}
				seen[path] = true
				if execpath.IsPrefix(path) {
					j.prefixes = append(j.prefixes, path)
				} else {
					j.exact = append(j.exact, path)
				}
			}
		}
		sort.Strings(j.exact)
		sort.Strings(j.prefixes)
		jobs = append(jobs, j)
	}
	return jobs
}

// inspectPod inspects the container roots of one pod not yet inspected at j.version
// and returns the roots it inspected.
func (a *Agent) inspectPod(j *loaderJob, findings *[]loaderFinding) map[rootID]uint64 {
	done := map[rootID]uint64{}
	budget := loaderScanMaxPIDs
	for _, dir := range podCgroupDirs(j.dir) {
		pids, err := cgroups.PIDs(dir)
		if err != nil {
			continue
		}
		for _, pid := range pids {
			if budget--; budget < 0 {
				return done
			}
			if !runsInOwnRoot(pid) {
				continue // not (yet) running in its container's root
			}
			root, err := loaders.OpenRoot(procDir, pid)
			if err != nil {
				continue
			}
			id, err := rootOf(root)
			if err != nil || j.checked[id] == j.version || done[id] == j.version {
				root.Close()
				continue
			}
			a.inspectRoot(j, root, findings)
			root.Close()
			done[id] = j.version
		}
	}
	return done
}

// podCgroupDirs lists the pod cgroup and the cgroups directly below it (containers).
func podCgroupDirs(dir string) []string {
	out := []string{dir}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// rootOf identifies an open file (a root directory, or any file in it).
func rootOf(root *os.File) (rootID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &st); err != nil {
		return rootID{}, err
	}
	return rootID{dev: st.Dev, ino: st.Ino}, nil
}

// inspectRoot checks every path of j in one container root: by content, and by
// identity (an allowed file that is the PT_INTERP of an allowed program is the loader
// the kernel starts it with, whatever its content says).
func (a *Agent) inspectRoot(j *loaderJob, root *os.File, findings *[]loaderFinding) {
	files := map[rootID]string{}   // allowed file -> its path
	interps := map[rootID]string{} // interpreter file -> a program naming it
	for _, path := range j.exact {
		f, err := loaders.OpenInRoot(root, path)
		if err != nil {
			continue // absent in this container, or reached only through a link
		}
		v, err := loaders.Check(f)
		if id, idErr := rootOf(f); idErr == nil && err == nil && !v.Loader {
			files[id] = path
		}
		f.Close()
		if err != nil {
			continue
		}
		if v.Loader {
			*findings = append(*findings, loaderFinding{job: j, path: path, reason: v.Reason})
			continue
		}
		if v.Interp == "" {
			continue
		}
		if in, err := loaders.OpenInterpreter(root, v.Interp); err == nil {
			if id, err := rootOf(in); err == nil {
				interps[id] = path
			}
			in.Close()
		}
	}
	for id, path := range files {
		if prog, ok := interps[id]; ok {
			*findings = append(*findings, loaderFinding{job: j, path: path,
				reason: "is the interpreter (PT_INTERP) of the allowed program " + execpath.Quote(prog) + ": a dynamic loader, which runs any readable file named on its command line"})
		}
	}
	for _, prefix := range j.prefixes {
		found, complete, err := loaders.FindInRoot(root, prefix, loaderPrefixScanLimit)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Debug("loader check: walk prefix rule", zap.String("policy", string(j.key)), zap.String("prefix", prefix), zap.Error(err))
		}
		if !complete {
			a.prefixIncomplete(j, prefix)
		}
		for _, file := range slices.Sorted(mapKeys(found)) {
			*findings = append(*findings, loaderFinding{job: j, path: prefix,
				reason: "covers " + execpath.Quote(file) + ", which " + found[file]})
			break // the rule is refused whole: one file says why
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (a *Agent) prefixIncomplete(j *loaderJob, prefix string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.loaders.incomplete[j.key]
	if m == nil {
		m = map[string]bool{}
		a.loaders.incomplete[j.key] = m
	}
	if m[prefix] {
		return
	}
	m[prefix] = true
	a.metrics.loaderCheck(j.namespace, string(j.key), "incomplete")
	a.log.Warn("loader check: a prefix rule's directory holds more entries than are inspected; a dynamic loader deeper in it is not refused (list the executables instead)",
		zap.String("namespace", j.namespace), zap.String("pod", j.name), zap.String("policy", string(j.key)),
		zap.String("prefix", prefix), zap.Int("max_entries", loaderPrefixScanLimit))
}

// refuseLoaderLocked refuses f.path for its policy on this node, once.
func (a *Agent) refuseLoaderLocked(f loaderFinding) {
	key := f.job.key
	if _, done := a.loaders.refused[key][f.path]; done {
		return
	}
	if a.loaders.refused[key] == nil {
		a.loaders.refused[key] = map[string]string{}
	}
	a.loaders.refused[key][f.path] = f.reason
	n, err := a.enf.RefusePaths(key, []string{f.path})
	log := a.log.With(zap.String("namespace", f.job.namespace), zap.String("pod", f.job.name), zap.String("pod_uid", f.job.uid),
		zap.String("policy", string(key)), zap.String("executable", f.path))
	if err != nil && !errors.Is(err, enforcer.ErrNotFound) {
		// The entries stay allowed: say so loudly, and retry at the next inspection.
		delete(a.loaders.refused[key], f.path)
		delete(a.loaders.checked, f.job.uid)
		log.Error("loader check: could not refuse a dynamic loader at an allowed path", zap.Error(err))
		return
	}
	a.metrics.loaderCheck(f.job.namespace, string(key), "refused")
	note := fmt.Sprintf("WorkloadPolicy %s allows %s, which %s: it is refused on node %s for every pod of the policy (remove it from the policy)",
		key, execpath.Quote(f.path), f.reason, a.opts.NodeName)
	log.Warn("loader check: refused a dynamic loader at an allowed path", zap.String("reason", f.reason), zap.Int("entries_deleted", n))
	a.podEvent(f.job, corev1.EventTypeWarning, ReasonLoaderRefused, "RefuseLoader", note)
}

// podEvent records an Event on a pod through the backstop's recorder, if it runs.
func (a *Agent) podEvent(j *loaderJob, typ, reason, action, note string) {
	a.eventOnPod(j.namespace, j.name, j.uid, typ, reason, action, note)
}

// learnIsLoader checks the file of a Learn event: loader reports whether it is
// a dynamic loader, known whether the file could be read at all (through the process
// that ran it or another process of its cgroup).
func (a *Agent) learnIsLoader(p *podState, pid uint32, cgroupID uint64, path string) (loader, known bool) {
	for _, candidate := range a.learnReaders(p, pid, cgroupID) {
		root, err := loaders.OpenRoot(procDir, candidate)
		if err != nil {
			continue
		}
		f, err := loaders.OpenInRoot(root, path)
		root.Close()
		if err != nil {
			continue
		}
		v, err := loaders.Check(f)
		f.Close()
		if errors.Is(err, loaders.ErrNotELF) {
			return false, true
		}
		if err != nil {
			return true, true // a malformed ELF file is not proposed either
		}
		return v.Loader, true
	}
	return false, false
}

// learnReaders lists the processes through whose root a Learn event's file can be read:
// the one that ran it, then (it may have exited) the others of the same cgroup.
func (a *Agent) learnReaders(p *podState, pid uint32, cgroupID uint64) []int {
	out := []int{}
	if pid > 0 {
		out = append(out, int(pid))
	}
	if p == nil {
		return out
	}
	for _, dir := range podCgroupDirs(a.layout.PodCgroupPath(p.uid, p.qos)) {
		if id, err := cgroups.ID(dir); err != nil || id != cgroupID {
			continue
		}
		pids, _ := cgroups.PIDs(dir)
		for i, other := range pids {
			if i >= 64 {
				break
			}
			if other != int(pid) && runsInOwnRoot(other) {
				out = append(out, other)
			}
		}
	}
	return out
}
