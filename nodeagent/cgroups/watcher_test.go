package cgroups

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const eventTimeout = 5 * time.Second

// runWatcher runs w until the test ends, then checks that Run returned nil and
// closed Events.
func runWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(eventTimeout):
			t.Fatal("Run did not return after cancel")
		}
		for range w.Events() { // drain; must be closed
		}
	})
}

// collect reads n events or fails.
func collect(t *testing.T, w *Watcher, n int) []Event {
	t.Helper()
	var got []Event
	timeout := time.After(eventTimeout)
	for len(got) < n {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("events closed after %d of %d", len(got), n)
			}
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("got %d of %d events:\n%s", len(got), n, eventsString(got))
		}
	}
	return got
}

// expect reads exactly the wanted events, in any order (checkOrder checks the order
// that matters), and then nothing else for a moment.
func expect(t *testing.T, w *Watcher, want ...Event) {
	t.Helper()
	got := collect(t, w, len(want))
	if g, w := eventsString(got), eventsString(want); g != w {
		t.Fatalf("events:\n got %s\nwant %s", g, w)
	}
	expectQuiet(t, w)
}

func expectQuiet(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case ev := <-w.Events():
		t.Fatalf("unexpected event %s", eventString(ev))
	case <-time.After(50 * time.Millisecond):
	}
}

func eventsString(evs []Event) string {
	s := make([]string, len(evs))
	for i, ev := range evs {
		s[i] = eventString(ev)
	}
	slices.Sort(s)
	return "\n  " + strings.Join(s, "\n  ")
}

func eventString(ev Event) string {
	switch e := ev.(type) {
	case PodCgroupCreated:
		return fmt.Sprintf("pod+ %s %s %d %s", e.UID, e.QoS, e.CgroupID, e.Path)
	case PodCgroupRemoved:
		return fmt.Sprintf("pod- %s %s %d %s", e.UID, e.QoS, e.CgroupID, e.Path)
	case ContainerCgroupCreated:
		return fmt.Sprintf("ctr+ %s %s %q %d %s", e.PodUID, e.ContainerID, e.Runtime, e.CgroupID, e.Path)
	case ContainerCgroupRemoved:
		return fmt.Sprintf("ctr- %s %s %q %d %s", e.PodUID, e.ContainerID, e.Runtime, e.CgroupID, e.Path)
	}
	return fmt.Sprintf("%#v", ev)
}

// checkOrder asserts the stream is well formed: a container is reported after its
// pod, removals only for what was created, a pod's containers are removed before it,
// and nothing is reported twice.
func checkOrder(t *testing.T, evs []Event) (livePods, liveContainers int) {
	t.Helper()
	pods := map[string]uint64{}
	ctrs := map[string]map[string]bool{}
	for _, ev := range evs {
		switch e := ev.(type) {
		case PodCgroupCreated:
			if _, dup := pods[e.UID]; dup {
				t.Fatalf("pod %s created twice", e.UID)
			}
			pods[e.UID] = e.CgroupID
			ctrs[e.UID] = map[string]bool{}
		case PodCgroupRemoved:
			if id, ok := pods[e.UID]; !ok || id != e.CgroupID {
				t.Fatalf("pod %s removed without being created (id %d)", e.UID, e.CgroupID)
			}
			if len(ctrs[e.UID]) != 0 {
				t.Fatalf("pod %s removed before its containers", e.UID)
			}
			delete(pods, e.UID)
		case ContainerCgroupCreated:
			c, ok := ctrs[e.PodUID]
			if !ok || c[e.ContainerID] {
				t.Fatalf("container %s created before its pod or twice", e.ContainerID)
			}
			c[e.ContainerID] = true
		case ContainerCgroupRemoved:
			if !ctrs[e.PodUID][e.ContainerID] {
				t.Fatalf("container %s removed without being created", e.ContainerID)
			}
			delete(ctrs[e.PodUID], e.ContainerID)
		}
	}
	for _, c := range ctrs {
		liveContainers += len(c)
	}
	return len(pods), liveContainers
}

func waitStats(t *testing.T, w *Watcher, what string, ok func(WatcherStats) bool) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for !ok(w.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, w.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func podCreated(l Layout, uid string, q QoS) Event {
	p := l.PodCgroupPath(uid, q)
	return PodCgroupCreated{PodCgroup{UID: uid, QoS: q, Path: p, CgroupID: idOrZero(p)}}
}

func ctrCreated(l Layout, uid string, q QoS, rt Runtime, cid string) Event {
	p := l.ContainerCgroupPath(uid, q, rt, cid)
	if l.Driver() == DriverCgroupfs && rt != RuntimeCRIO {
		rt = RuntimeUnspecified
	}
	return ContainerCgroupCreated{ContainerCgroup{PodUID: uid, Runtime: rt, ContainerID: cid, Path: p, CgroupID: idOrZero(p)}}
}

func removed(ev Event) Event {
	switch e := ev.(type) {
	case PodCgroupCreated:
		return PodCgroupRemoved(e)
	case ContainerCgroupCreated:
		return ContainerCgroupRemoved(e)
	}
	panic("not a create event")
}

func idOrZero(p string) uint64 {
	id, _ := ID(p)
	return id
}

var watcherLayouts = []struct {
	name       string
	driver     Driver
	cgroupRoot string
	runtime    Runtime
}{
	{"systemd", DriverSystemd, "/", RuntimeContainerd},
	{"systemd kind root", DriverSystemd, "/kubelet", RuntimeCRIO},
	{"cgroupfs", DriverCgroupfs, "/", RuntimeContainerd},
	{"cgroupfs prefixed root", DriverCgroupfs, "/execgate-e2e/node-1", RuntimeCRIO},
}

// TestWatcherLifecycleRoot walks pods through their lives with the parent directories
// missing at start, created one by one and all at once, for every layout.
func TestWatcherLifecycleRoot(t *testing.T) {
	for _, tc := range watcherLayouts {
		t.Run(tc.name, func(t *testing.T) {
			_, tree := testTree(t)
			// The simulated node's own directory does not exist yet either.
			l := mustLayout(t, filepath.Join(tree, "node-1"), tc.driver, tc.cgroupRoot)
			w := NewWatcher(l, nil)
			for _, uid := range []string{uidA, uidB} {
				if err := w.AddPod(uid); err != nil {
					t.Fatal(err)
				}
			}
			runWatcher(t, w)
			// Top of the cgroup2 mount and the test tree.
			waitStats(t, w, "baseline", func(s WatcherStats) bool { return s.Watches == 2 })
			baseline := w.Stats().Watches
			expectQuiet(t, w)

			// Guaranteed pod: every directory made one at a time.
			var dirs []string
			for d := l.PodCgroupPath(uidA, QoSGuaranteed); d != tree; d = filepath.Dir(d) {
				dirs = append(dirs, d)
			}
			slices.Reverse(dirs)
			for _, d := range dirs[:len(dirs)-1] {
				mkdirAll(t, d)
				expectQuiet(t, w)
			}
			mkdirAll(t, dirs[len(dirs)-1])
			podA := podCreated(l, uidA, QoSGuaranteed)
			expect(t, w, podA)
			mkdirAll(t, l.ContainerCgroupPath(uidA, QoSGuaranteed, tc.runtime, cidA))
			ctrA := ctrCreated(l, uidA, QoSGuaranteed, tc.runtime, cidA)
			expect(t, w, ctrA)

			// Burstable pod: QoS directory, pod and containers in one burst.
			b1 := l.ContainerCgroupPath(uidB, QoSBurstable, tc.runtime, cidB)
			b2 := l.ContainerCgroupPath(uidB, QoSBurstable, tc.runtime, cidC)
			mkdirAll(t, b1, b2)
			podB := podCreated(l, uidB, QoSBurstable)
			ctrB1 := ctrCreated(l, uidB, QoSBurstable, tc.runtime, cidB)
			ctrB2 := ctrCreated(l, uidB, QoSBurstable, tc.runtime, cidC)
			expect(t, w, podB, ctrB1, ctrB2)

			// Not of interest, and not containers: nothing.
			notContainer := filepath.Join(l.PodCgroupPath(uidA, QoSGuaranteed), "not-a-container")
			mkdirAll(t,
				l.ContainerCgroupPath(uidX, QoSBurstable, tc.runtime, cidA),
				notContainer,
				filepath.Join(l.QoSPath(QoSBurstable), "not-a-pod"))
			expectQuiet(t, w)

			// Best-effort pod that exists before it becomes of interest.
			mkdirAll(t, l.ContainerCgroupPath(uidC, QoSBestEffort, tc.runtime, cidC))
			expectQuiet(t, w)
			if err := w.AddPod(uidC); err != nil {
				t.Fatal(err)
			}
			podC := podCreated(l, uidC, QoSBestEffort)
			ctrC := ctrCreated(l, uidC, QoSBestEffort, tc.runtime, cidC)
			expect(t, w, podC, ctrC)
			if err := w.AddPod(uidC); err != nil { // again: nothing new
				t.Fatal(err)
			}
			expectQuiet(t, w)
			waitStats(t, w, "three pods", func(s WatcherStats) bool { return s.Pods == 3 && s.Containers == 4 })

			// Removal, container first, the way the kubelet does it.
			rmdir(t, l.ContainerCgroupPath(uidA, QoSGuaranteed, tc.runtime, cidA))
			expect(t, w, removed(ctrA))
			rmdir(t, notContainer, l.PodCgroupPath(uidA, QoSGuaranteed))
			expect(t, w, removed(podA))
			// No longer of interest: its removal is not reported.
			if err := w.RemovePod(uidB); err != nil {
				t.Fatal(err)
			}
			// RemovePod is asynchronous; wait until it took effect.
			waitStats(t, w, "pod B dropped", func(s WatcherStats) bool { return s.Pods == 1 })
			rmdir(t, b1, b2, l.PodCgroupPath(uidB, QoSBurstable))
			rmdir(t, l.ContainerCgroupPath(uidC, QoSBestEffort, tc.runtime, cidC), l.PodCgroupPath(uidC, QoSBestEffort))
			expect(t, w, removed(ctrC), removed(podC))
			waitStats(t, w, "no pods", func(s WatcherStats) bool { return s.Pods == 0 && s.Containers == 0 })

			// Tear the node down: the watches shrink back to the baseline, and a pod
			// created again from scratch is still seen.
			rmdir(t, l.ContainerCgroupPath(uidX, QoSBurstable, tc.runtime, cidA), l.PodCgroupPath(uidX, QoSBurstable))
			if err := removeTree(l.Root()); err != nil {
				t.Fatal(err)
			}
			waitStats(t, w, "watches back to baseline", func(s WatcherStats) bool { return s.Watches == baseline })
			expectQuiet(t, w)
			mkdirAll(t, l.ContainerCgroupPath(uidC, QoSBestEffort, tc.runtime, cidA))
			expect(t, w, podCreated(l, uidC, QoSBestEffort), ctrCreated(l, uidC, QoSBestEffort, tc.runtime, cidA))
		})
	}
}

// TestWatcherAdoptsExistingRoot: pods running before the watcher starts are reported
// at start, like Scan reports them.
func TestWatcherAdoptsExistingRoot(t *testing.T) {
	_, tree := testTree(t)
	l := mustLayout(t, tree, DriverSystemd, "/")
	mkdirAll(t,
		l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeContainerd, cidA),
		l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeContainerd, cidB),
		l.ContainerCgroupPath(uidX, QoSGuaranteed, RuntimeContainerd, cidC))
	w := NewWatcher(l, nil)
	if err := w.AddPod(uidA); err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	expect(t, w,
		podCreated(l, uidA, QoSBurstable),
		ctrCreated(l, uidA, QoSBurstable, RuntimeContainerd, cidA),
		ctrCreated(l, uidA, QoSBurstable, RuntimeContainerd, cidB))
}

func manyUIDs(n int) []string {
	uids := make([]string, n)
	for i := range uids {
		uids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
	}
	return uids
}

// TestWatcherManyPodsRoot creates and deletes 200 pods as fast as mkdir/rmdir go:
// no event is lost, and the watches return to their baseline.
func TestWatcherManyPodsRoot(t *testing.T) {
	_, tree := testTree(t)
	l := mustLayout(t, tree, DriverSystemd, "/")
	mkdirAll(t, l.QoSPath(QoSBurstable), l.QoSPath(QoSBestEffort))
	w := NewWatcher(l, nil)
	uids := manyUIDs(200)
	// The churn below ends with a sentinel pod. It is of interest from the start:
	// a pod added later is scanned when AddPod takes effect, possibly before older
	// queued events, so only inotify-driven events have an order to rely on.
	const sentinel = "5e471e1-0000-4000-8000-000000000000"
	for _, uid := range append(uids, sentinel) {
		if err := w.AddPod(uid); err != nil {
			t.Fatal(err)
		}
	}
	runWatcher(t, w)
	waitStats(t, w, "baseline", func(s WatcherStats) bool { return s.Watches == 5 })
	baseline := w.Stats().Watches

	cid := func(i int) string { return fmt.Sprintf("%064x", i) }
	for i, uid := range uids {
		mkdirAll(t, l.ContainerCgroupPath(uid, QoSBurstable, RuntimeContainerd, cid(i)))
	}
	var want []Event
	for i, uid := range uids {
		want = append(want, podCreated(l, uid, QoSBurstable), ctrCreated(l, uid, QoSBurstable, RuntimeContainerd, cid(i)))
	}
	got := collect(t, w, len(want))
	if g, w := eventsString(got), eventsString(want); g != w {
		t.Fatalf("creating 200 pods: events differ")
	}
	checkOrder(t, got)
	waitStats(t, w, "200 pods watched", func(s WatcherStats) bool {
		return s.Watches == baseline+200 && s.Pods == 200 && s.Containers == 200
	})

	for i, uid := range uids {
		rmdir(t, l.ContainerCgroupPath(uid, QoSBurstable, RuntimeContainerd, cid(i)), l.PodCgroupPath(uid, QoSBurstable))
	}
	gone := collect(t, w, len(want))
	var wantGone []Event
	for _, ev := range want {
		wantGone = append(wantGone, removed(ev))
	}
	if g, w := eventsString(gone), eventsString(wantGone); g != w {
		t.Fatalf("removing 200 pods: events differ")
	}
	if pods, ctrs := checkOrder(t, append(got, gone...)); pods != 0 || ctrs != 0 {
		t.Fatalf("%d pods and %d containers left alive", pods, ctrs)
	}
	waitStats(t, w, "watches back to baseline", func(s WatcherStats) bool {
		return s.Watches == baseline && s.Pods == 0 && s.Containers == 0
	})
	expectQuiet(t, w)

	// Churn: each pod lives for a few microseconds. The watcher may see a pod or
	// miss it entirely, but what it reports must pair up. The sentinel pod marks the
	// end: events from one inotify queue are delivered in order.
	for i, uid := range uids {
		c := l.ContainerCgroupPath(uid, QoSBestEffort, RuntimeContainerd, cid(i))
		mkdirAll(t, c)
		rmdir(t, c, filepath.Dir(c))
	}
	mkdirAll(t, l.PodCgroupPath(sentinel, QoSBurstable))
	var churn []Event
	timeout := time.After(eventTimeout)
	for done := false; !done; {
		select {
		case ev := <-w.Events():
			churn = append(churn, ev)
			if e, ok := ev.(PodCgroupCreated); ok && e.UID == sentinel {
				done = true
			}
		case <-timeout:
			t.Fatalf("sentinel not seen after %d churn events", len(churn))
		}
	}
	if pods, ctrs := checkOrder(t, churn); pods != 1 || ctrs != 0 {
		live := map[string]int{}
		for _, ev := range churn {
			switch e := ev.(type) {
			case PodCgroupCreated:
				live[e.UID]++
			case PodCgroupRemoved:
				live[e.UID]--
			}
		}
		for uid, n := range live {
			if n != 0 {
				for _, ev := range churn {
					if strings.Contains(eventString(ev), uid) {
						t.Logf("%s", eventString(ev))
					}
				}
			}
		}
		t.Fatalf("after churn %d pods and %d containers alive, want only the sentinel", pods, ctrs)
	}
	t.Logf("churn of %d pods: %d events reported", len(uids), len(churn)-1)
	sentinelGone := removed(podCreated(l, sentinel, QoSBurstable))
	rmdir(t, l.PodCgroupPath(sentinel, QoSBurstable))
	expect(t, w, sentinelGone)
	waitStats(t, w, "watches back to baseline after churn", func(s WatcherStats) bool {
		return s.Watches == baseline && s.Pods == 0
	})
}

// TestWatcherOverflowRescanRoot: after IN_Q_OVERFLOW the watcher rebuilds its view
// from the filesystem. The kernel queue limit is system-wide, so the overflow is
// injected instead of provoked.
func TestWatcherOverflowRescanRoot(t *testing.T) {
	_, tree := testTree(t)
	l := mustLayout(t, tree, DriverCgroupfs, "/")
	mkdirAll(t, l.QoSPath(QoSBurstable), l.QoSPath(QoSBestEffort))
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	s := newWatchState(l, fd)
	s.interest[uidA] = struct{}{}
	if err := s.ensureParents(); err != nil {
		t.Fatal(err)
	}
	baseline := len(s.watches)
	c := l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeContainerd, cidA)
	mkdirAll(t, c)
	if err := s.handle(-1, unix.IN_Q_OVERFLOW, ""); err != nil {
		t.Fatal(err)
	}
	created := []Event{podCreated(l, uidA, QoSBurstable), ctrCreated(l, uidA, QoSBurstable, RuntimeContainerd, cidA)}
	if g, w := eventsString(s.out), eventsString(created); g != w {
		t.Fatalf("after overflow:\n got %s\nwant %s", g, w)
	}
	s.out = nil
	rmdir(t, c, filepath.Dir(c))
	if err := s.handle(-1, unix.IN_Q_OVERFLOW, ""); err != nil {
		t.Fatal(err)
	}
	if g, w := eventsString(s.out), eventsString([]Event{removed(created[0]), removed(created[1])}); g != w {
		t.Fatalf("after overflow:\n got %s\nwant %s", g, w)
	}
	if len(s.watches) != baseline {
		t.Fatalf("%d watches, want %d", len(s.watches), baseline)
	}
}

func TestWatcherStopsCleanlyRoot(t *testing.T) {
	_, tree := testTree(t)
	l := mustLayout(t, tree, DriverSystemd, "/")
	before := runtime.NumGoroutine()
	for range 20 {
		w := NewWatcher(l, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		if err := w.AddPod(uidA); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run after cancel: %v", err)
			}
		case <-time.After(eventTimeout):
			t.Fatal("Run did not return after cancel")
		}
		if _, open := <-w.Events(); open {
			t.Fatal("Events not closed")
		}
		if err := w.Run(context.Background()); err == nil {
			t.Fatal("second Run succeeded")
		}
	}
	// A consumer that stops reading must not keep Run from exiting.
	w := NewWatcher(l, nil)
	for _, uid := range manyUIDs(300) {
		_ = w.AddPod(uid)
		mkdirAll(t, l.PodCgroupPath(uid, QoSGuaranteed))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitStats(t, w, "blocked on send", func(s WatcherStats) bool { return s.Pods == 300 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(eventTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatcherRejectsBadUIDs(t *testing.T) {
	w := NewWatcher(mustLayout(t, "/sys/fs/cgroup", DriverSystemd, "/"), nil)
	for _, uid := range []string{"", "a/b", "a_b", strings.Repeat("1", 100)} {
		if err := w.AddPod(uid); err == nil {
			t.Errorf("AddPod(%q) succeeded", uid)
		}
		if err := w.RemovePod(uid); err == nil {
			t.Errorf("RemovePod(%q) succeeded", uid)
		}
	}
}

// failOnce returns a fault that fails the first call on path with err.
func failOnce(path string, err error) func(string) error {
	var mu sync.Mutex
	done := false
	return func(p string) error {
		mu.Lock()
		defer mu.Unlock()
		if p == path && !done {
			done = true
			return err
		}
		return nil
	}
}

// TestWatcherResyncFindsMissedRoot: inotify missed a change (the VM matrix saw a QoS
// directory made during its parent's watch go unreported and unfound), simulated by
// a lookup that fails once with ENOENT for a directory that exists and raises no
// event later. The resync timer still reports the pod, and says it recovered.
func TestWatcherResyncFindsMissedRoot(t *testing.T) {
	for _, tc := range []struct {
		name string
		miss func(Layout) string
	}{
		{"QoS directory", func(l Layout) string { return l.QoSPath(QoSBurstable) }},
		{"pod cgroup", func(l Layout) string { return l.PodCgroupPath(uidA, QoSBurstable) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, tree := testTree(t)
			l := mustLayout(t, tree, DriverSystemd, "/")
			mkdirAll(t, l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeContainerd, cidA))
			w := NewWatcher(l, nil)
			w.setFault(failOnce(tc.miss(l), unix.ENOENT))
			if err := w.AddPod(uidA); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			runWatcher(t, w)
			expect(t, w,
				podCreated(l, uidA, QoSBurstable),
				ctrCreated(l, uidA, QoSBurstable, RuntimeContainerd, cidA))
			if d := time.Since(start); d < resyncFirst/2 {
				t.Fatalf("reported after %v: the fault did not hide the pod", d)
			}
			waitStats(t, w, "recovered", func(s WatcherStats) bool { return s.Recovered == 1 && s.Pods == 1 })
		})
	}
}

// TestWatcherResyncTimer: the timer runs only while something expected is missing,
// backs off to resyncMax, and restarts quickly for a new pod of interest.
func TestWatcherResyncTimer(t *testing.T) {
	_, tree := testTree(t)
	l := mustLayout(t, tree, DriverCgroupfs, "/")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	s := newWatchState(l, fd)
	now := time.Now()
	if err := s.ensureParents(); err != nil {
		t.Fatal(err)
	}
	if at := s.scheduleResync(now); at.Sub(now) != resyncFirst {
		t.Fatalf("QoS directories missing: resync in %v, want %v", at.Sub(now), resyncFirst)
	}
	for range 10 {
		if err := s.resync(); err != nil {
			t.Fatal(err)
		}
	}
	if at := s.scheduleResync(now); at.Sub(now) != resyncMax {
		t.Fatalf("after 10 resyncs: next in %v, want %v", at.Sub(now), resyncMax)
	}
	mkdirAll(t, l.QoSPath(QoSBurstable), l.QoSPath(QoSBestEffort))
	if err := s.resync(); err != nil {
		t.Fatal(err)
	}
	if at := s.scheduleResync(now); !at.IsZero() {
		t.Fatalf("everything tracked: resync at %v, want none", at)
	}
	if err := s.applyInterest(interestChange{uid: uidA, add: true}); err != nil {
		t.Fatal(err)
	}
	if at := s.scheduleResync(now); at.Sub(now) != resyncFirst {
		t.Fatalf("untracked pod of interest: resync in %v, want %v", at.Sub(now), resyncFirst)
	}
	mkdirAll(t, l.PodCgroupPath(uidA, QoSBurstable))
	if err := s.resync(); err != nil {
		t.Fatal(err)
	}
	if at := s.scheduleResync(now); !at.IsZero() || len(s.pods) != 1 {
		t.Fatalf("pod tracked (%d pods): resync at %v, want none", len(s.pods), at)
	}
}
