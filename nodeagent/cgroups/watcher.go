package cgroups

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Event is one of PodCgroupCreated, PodCgroupRemoved, ContainerCgroupCreated and
// ContainerCgroupRemoved.
type Event interface{ cgroupEvent() }

// PodCgroupCreated says the cgroup of a pod of interest exists (it was created, or it
// already existed when the pod was added or the watcher started).
type PodCgroupCreated struct{ PodCgroup }

// PodCgroupRemoved says the pod's cgroup is gone. It follows the ContainerCgroupRemoved
// of every container reported for the pod.
type PodCgroupRemoved struct{ PodCgroup }

// ContainerCgroupCreated says a container cgroup appeared in a pod of interest. The pod
// sandbox (pause) container is reported like any other.
type ContainerCgroupCreated struct{ ContainerCgroup }

// ContainerCgroupRemoved says a container cgroup reported earlier is gone.
type ContainerCgroupRemoved struct{ ContainerCgroup }

func (PodCgroupCreated) cgroupEvent()       {}
func (PodCgroupRemoved) cgroupEvent()       {}
func (ContainerCgroupCreated) cgroupEvent() {}
func (ContainerCgroupRemoved) cgroupEvent() {}

// WatcherStats is a snapshot of what the watcher holds; Watches is the number of
// inotify watches, which returns to its baseline (one per QoS directory, or per
// missing directory's nearest ancestor) when the pods of interest are gone.
type WatcherStats struct {
	Watches    int
	Pods       int
	Containers int
	Overflows  uint64 // inotify queue overflows, each answered by a full rescan
	// Recovered counts resyncs that found what inotify had not reported (a QoS
	// directory to watch, a pod or container cgroup that came or went).
	Recovered uint64
}

// Watcher reports the pod and container cgroups of the pods of interest as they
// appear and disappear, from inotify (no polling): one watch on each QoS directory
// (or, while it does not exist yet, on its nearest existing ancestor) and one on the
// cgroup of each pod of interest that exists. Container cgroups are not watched.
//
// Every watch is followed by a scan of the directory, so a cgroup created just before
// its parent was watched is still reported; duplicates are suppressed by remembering
// what was reported (keyed by name and cgroup id). A pod cgroup that is created and
// removed before the watcher could look at it is reported by neither event.
//
// inotify is not trusted to be complete: under a busy, emulated kernel a QoS
// directory made while its parent's watch was being added was neither reported by
// IN_CREATE nor found by the lookup right after it, and the pods below it went
// unenforced. So while anything expected is missing (a QoS directory not watched, a
// pod of interest whose cgroup was not reported) the watcher rescans on a timer,
// from resyncFirst doubling to resyncMax: a missed event costs seconds, never the
// pod's enforcement. A fully tracked node has no timer.
//
// AddPod and RemovePod may be called from any goroutine, before or during Run; they
// take effect asynchronously (events already queued for a removed pod may still be
// delivered). Events of one pod come in order. Across pods, events follow the inotify
// queue, except that a pod found by AddPod's scan is reported when the change takes
// effect, possibly ahead of older queued events for other pods.
// Run owns all watcher state; it stops when its context is done and closes Events.
type Watcher struct {
	layout Layout
	log    *zap.Logger
	events chan Event

	mu      sync.Mutex
	pending []interestChange // applied by Run in order
	wake    func()           // interrupts Run's read; nil unless Run is running
	started bool
	fault   func(path string) error // tests only, see watchState.fault

	watches, pods, containers atomic.Int64
	overflows, recovered      atomic.Uint64
}

type interestChange struct {
	uid string
	add bool
}

// NewWatcher returns a watcher for the layout's pods; log may be nil.
func NewWatcher(l Layout, log *zap.Logger) *Watcher {
	if log == nil {
		log = zap.NewNop()
	}
	return &Watcher{layout: l, log: log, events: make(chan Event, 256)}
}

// fault is handed to Run's watch state; set by tests before Run.
func (w *Watcher) setFault(f func(path string) error) { w.fault = f }

// Events delivers the watcher's events; it is closed when Run returns. Run blocks
// while nobody reads, and the kernel queues what happens meanwhile.
func (w *Watcher) Events() <-chan Event { return w.events }

// AddPod adds a pod of interest. If its cgroup exists it is reported at once (with its
// containers); adding a pod already of interest does nothing.
func (w *Watcher) AddPod(uid string) error {
	if err := ValidatePodUID(uid); err != nil {
		return fmt.Errorf("watch pod cgroup: %w", err)
	}
	w.enqueue(interestChange{uid: uid, add: true})
	return nil
}

// RemovePod drops a pod of interest and its watch, without reporting removal.
func (w *Watcher) RemovePod(uid string) error {
	if err := ValidatePodUID(uid); err != nil {
		return fmt.Errorf("unwatch pod cgroup: %w", err)
	}
	w.enqueue(interestChange{uid: uid, add: false})
	return nil
}

func (w *Watcher) enqueue(c interestChange) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, c)
	if w.wake != nil {
		w.wake()
	}
}

// Stats is safe to call from any goroutine.
func (w *Watcher) Stats() WatcherStats {
	return WatcherStats{
		Watches:    int(w.watches.Load()),
		Pods:       int(w.pods.Load()),
		Containers: int(w.containers.Load()),
		Overflows:  w.overflows.Load(),
		Recovered:  w.recovered.Load(),
	}
}

// Run watches until ctx is done (then it returns nil) or watching fails: inotify is
// unavailable, the watch limit is reached (fs.inotify.max_user_watches), or a
// directory cannot be read. It may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("cgroup watcher: Run called twice")
	}
	w.started = true
	w.mu.Unlock()
	defer close(w.events)

	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("cgroup watcher: inotify_init1: %w", err)
	}
	// As an *os.File the non-blocking fd is served by Go's poller, so a read deadline
	// can interrupt a read: that is how AddPod and cancellation wake the loop without
	// a second fd or goroutine.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	wake := func() { _ = f.SetReadDeadline(time.Now()) }
	w.mu.Lock()
	w.wake = wake
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.wake = nil
		w.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, wake)
	defer stop()

	s := newWatchState(w.layout, fd)
	s.fault = w.fault
	if err := s.ensureParents(); err != nil {
		return err
	}
	buf := make([]byte, 64*1024) // far more than one event (16 bytes + NAME_MAX + 1)
	for {
		// Clear the deadline before taking the pending changes: a wake-up that lands
		// after this point sets a new deadline and the read below returns at once.
		if err := f.SetReadDeadline(time.Time{}); err != nil {
			return fmt.Errorf("cgroup watcher: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		w.mu.Lock()
		changes := w.pending
		w.pending = nil
		w.mu.Unlock()
		for _, c := range changes {
			if err := s.applyInterest(c); err != nil {
				return err
			}
		}
		if !w.flush(ctx, s) {
			return nil
		}
		if at := s.scheduleResync(time.Now()); !at.IsZero() {
			if !time.Now().Before(at) {
				if err := w.resync(s); err != nil {
					return err
				}
				continue
			}
			// Under mu, and only with nothing pending: enqueue wakes under mu too, so
			// this deadline cannot overwrite a wake-up for a change not yet taken.
			var derr error
			w.mu.Lock()
			if len(w.pending) == 0 {
				derr = f.SetReadDeadline(at)
			}
			w.mu.Unlock()
			if derr != nil {
				return fmt.Errorf("cgroup watcher: %w", derr)
			}
			if ctx.Err() != nil { // cancelled before the deadline was set: its wake-up was overwritten
				return nil
			}
		}

		n, err := f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("cgroup watcher: read inotify: %w", err)
		}
		if err := s.handleBuffer(buf[:n]); err != nil {
			return err
		}
		if s.overflows > 0 {
			w.overflows.Add(s.overflows)
			w.log.Warn("inotify queue overflowed; rescanned pod cgroups", zap.Uint64("overflows", s.overflows))
			s.overflows = 0
		}
		if !w.flush(ctx, s) {
			return nil
		}
	}
}

// resync rescans after a timer (see Watcher) and says so when it found what inotify
// had not reported.
func (w *Watcher) resync(s *watchState) error {
	events, watched := len(s.out), len(s.wdByPath)
	if err := s.resync(); err != nil {
		return err
	}
	if len(s.out) != events || len(s.wdByPath) != watched {
		w.recovered.Add(1)
		w.log.Warn("inotify did not report a cgroup change; the periodic resync found it",
			zap.Int("events", len(s.out)-events), zap.Int("watchDelta", len(s.wdByPath)-watched))
	}
	return nil
}

// flush publishes stats and sends the queued events; false means ctx is done.
func (w *Watcher) flush(ctx context.Context, s *watchState) bool {
	w.watches.Store(int64(len(s.watches)))
	w.pods.Store(int64(len(s.pods)))
	n := 0
	for _, tp := range s.pods {
		n += len(tp.containers)
	}
	w.containers.Store(int64(n))
	for i, ev := range s.out {
		select {
		case w.events <- ev:
		case <-ctx.Done():
			s.out = s.out[i:]
			return false
		}
	}
	s.out = s.out[:0]
	return true
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// watchState is owned by the goroutine in Run.
type watchState struct {
	l        Layout
	fd       int
	qosDirs  []string
	watches  map[int32]*inotifyWatch
	wdByPath map[string]int32
	interest map[string]struct{}
	pods     map[string]*trackedPod // pods of interest whose cgroup was reported
	out      []Event

	overflows uint64

	// The resync timer (see Watcher): zero while everything expected is tracked.
	resyncAt      time.Time
	resyncBackoff time.Duration
	// fault, in tests only, is consulted before each inotify_add_watch and pod
	// cgroup open: a non-nil error is returned as that call's result.
	fault func(path string) error
}

const (
	resyncFirst = 250 * time.Millisecond
	resyncMax   = 5 * time.Second
)

type inotifyWatch struct {
	path   string
	podUID string // set for a pod cgroup; QoS directories and ancestors have none
}

type trackedPod struct {
	PodCgroup
	wd         int32
	containers map[string]ContainerCgroup // by directory name
}

func newWatchState(l Layout, fd int) *watchState {
	return &watchState{
		l:        l,
		fd:       fd,
		qosDirs:  distinctQoSDirs(l),
		watches:  make(map[int32]*inotifyWatch),
		wdByPath: make(map[string]int32),
		interest: make(map[string]struct{}),
		pods:     make(map[string]*trackedPod),
	}
}

func distinctQoSDirs(l Layout) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, q := range qosClasses {
		if d := l.QoSPath(q); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func (s *watchState) emit(e Event) { s.out = append(s.out, e) }

// incomplete: something the watcher expects is not tracked, so a missed inotify
// event could be hiding it.
func (s *watchState) incomplete() bool {
	for _, d := range s.qosDirs {
		if _, ok := s.wdByPath[d]; !ok {
			return true
		}
	}
	for uid := range s.interest {
		if _, ok := s.pods[uid]; !ok {
			return true
		}
	}
	return false
}

// scheduleResync returns when the next resync is due, or zero when none is needed.
func (s *watchState) scheduleResync(now time.Time) time.Time {
	if !s.incomplete() {
		s.resyncAt, s.resyncBackoff = time.Time{}, 0
		return time.Time{}
	}
	if s.resyncAt.IsZero() {
		if s.resyncBackoff == 0 {
			s.resyncBackoff = resyncFirst
		}
		s.resyncAt = now.Add(s.resyncBackoff)
	}
	return s.resyncAt
}

// resync rebuilds the parent watches and reconciles every QoS directory and tracked
// pod with the filesystem, then backs the timer off.
func (s *watchState) resync() error {
	s.resyncAt = time.Time{}
	s.resyncBackoff = min(2*s.resyncBackoff, resyncMax)
	return s.ensureParents()
}

// ensureParents watches every existing directory on the way from the top of the
// cgroup2 filesystem down to each QoS directory, drops parent watches no longer
// needed, and reconciles the QoS directories with what was reported: each listed pod
// of interest through podSeen, which also reconciles a tracked pod's containers, so
// this one call is the full rescan (queue overflow, resync timer).
//
// Watching the whole chain, top down, is what makes this race-free on cgroup2: a
// directory is only watched after its parent is, so one created meanwhile raises
// IN_CREATE in the parent, and one removed raises IN_DELETE in the parent. The kernel
// does not report the removal of a watched cgroup directory to its own watch (no
// IN_DELETE_SELF or IN_IGNORED on kernfs), so the parent's IN_DELETE is the only news
// of it, and the watch lingers until it is removed here.
func (s *watchState) ensureParents() error {
	needed := make(map[string]bool)
	for _, target := range s.qosDirs {
		for _, dir := range watchChain(target) {
			if needed[dir] {
				continue
			}
			if _, err := s.addWatch(dir); err != nil {
				if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
					break // its creation will show up in the parent, watched already
				}
				if errors.Is(err, unix.ENOSPC) {
					return fmt.Errorf("cgroup watcher: watch %q: %w (inotify watch limit reached; raise fs.inotify.max_user_watches)", dir, err)
				}
				return fmt.Errorf("cgroup watcher: watch %q: %w", dir, err)
			}
			needed[dir] = true
		}
	}
	for wd, wt := range s.watches {
		if wt.podUID == "" && !needed[wt.path] {
			s.rmWatch(wd)
		}
	}
	for uid, tp := range s.pods {
		if !needed[filepath.Dir(tp.Path)] {
			s.podGone(uid)
		}
	}
	for _, dir := range s.qosDirs {
		if needed[dir] {
			if err := s.reconcileQoS(dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// watchChain lists, top down, the directories to watch for target: from the topmost
// directory of the cgroup2 filesystem above it (the mount point; or, when target is
// not below a cgroup2 mount, its nearest existing ancestor) down to target itself.
func watchChain(target string) []string {
	var up []string // target first
	top := -1
	for d := target; ; d = filepath.Dir(d) {
		up = append(up, d)
		var sfs unix.Statfs_t
		if err := unix.Statfs(d, &sfs); err == nil {
			if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
				if top < 0 {
					top = len(up) - 1
				}
				break
			}
			top = len(up) - 1
		}
		if d == "/" {
			break
		}
	}
	if top < 0 {
		top = len(up) - 1
	}
	chain := up[:top+1]
	slices.Reverse(chain)
	return chain
}

func (s *watchState) onTargetPath(p string) bool {
	for _, t := range s.qosDirs {
		if p == t || strings.HasPrefix(t, p+"/") {
			return true
		}
	}
	return false
}

func (s *watchState) isQoSDir(p string) bool {
	for _, t := range s.qosDirs {
		if p == t {
			return true
		}
	}
	return false
}

// addWatch watches a parent directory. Watching an inode twice returns the same wd.
func (s *watchState) addWatch(path string) (int32, error) {
	if s.fault != nil {
		if err := s.fault(path); err != nil {
			return -1, err
		}
	}
	wd, err := unix.InotifyAddWatch(s.fd, path, watchMask)
	if err != nil {
		return -1, err
	}
	s.track(int32(wd), &inotifyWatch{path: path})
	return int32(wd), nil
}

func (s *watchState) track(wd int32, wt *inotifyWatch) {
	if old, ok := s.watches[wd]; ok && old.path != wt.path {
		delete(s.wdByPath, old.path)
	}
	s.watches[wd] = wt
	s.wdByPath[wt.path] = wd
}

// forget drops a watch the kernel already removed (IN_IGNORED).
func (s *watchState) forget(wd int32) {
	if wt, ok := s.watches[wd]; ok {
		delete(s.watches, wd)
		if s.wdByPath[wt.path] == wd {
			delete(s.wdByPath, wt.path)
		}
	}
}

func (s *watchState) rmWatch(wd int32) {
	s.forget(wd)
	// EINVAL: the kernel dropped it already because the directory is gone.
	_, _ = unix.InotifyRmWatch(s.fd, uint32(wd))
}

// watchPodDir watches the pod cgroup at path and returns its cgroup id. The directory
// is opened once and watched through /proc/self/fd, so the id and the watch belong to
// the same directory even if the name is reused in between.
func (s *watchState) watchPodDir(path, uid string) (int32, uint64, error) {
	if s.fault != nil {
		if err := s.fault(path); err != nil {
			return -1, 0, fmt.Errorf("open pod cgroup %q: %w", path, err)
		}
	}
	dfd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("open pod cgroup %q: %w", path, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return -1, 0, fmt.Errorf("stat pod cgroup %q: %w", path, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(dfd, &sfs); err != nil {
		return -1, 0, fmt.Errorf("statfs pod cgroup %q: %w", path, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return -1, 0, fmt.Errorf("pod cgroup %q is not on a cgroup2 filesystem", path)
	}
	wd, err := unix.InotifyAddWatch(s.fd, "/proc/self/fd/"+strconv.Itoa(dfd), watchMask)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return -1, 0, fmt.Errorf("watch pod cgroup %q: %w (inotify watch limit reached; raise fs.inotify.max_user_watches)", path, err)
		}
		return -1, 0, fmt.Errorf("watch pod cgroup %q: %w", path, err)
	}
	s.track(int32(wd), &inotifyWatch{path: path, podUID: uid})
	return int32(wd), st.Ino, nil
}

func (s *watchState) applyInterest(c interestChange) error {
	if !c.add {
		delete(s.interest, c.uid)
		if tp := s.pods[c.uid]; tp != nil {
			s.rmWatch(tp.wd)
			delete(s.pods, c.uid)
		}
		return nil
	}
	if _, ok := s.interest[c.uid]; ok {
		return nil
	}
	// Interest first: a pod cgroup created after the look below is reported by its
	// IN_CREATE. A QoS directory not watched yet is scanned when it appears.
	s.interest[c.uid] = struct{}{}
	s.resyncAt, s.resyncBackoff = time.Time{}, 0 // a new pod gets the quick retries
	for _, q := range qosClasses {
		if _, watched := s.wdByPath[s.l.QoSPath(q)]; !watched {
			continue
		}
		p := s.l.PodCgroupPath(c.uid, q)
		if _, err := os.Lstat(p); err == nil {
			if err := s.podSeen(c.uid, q, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// reconcileQoS brings what was reported for the pods in dir in line with its listing.
func (s *watchState) reconcileQoS(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // its IN_IGNORED is on the way
	}
	if err != nil {
		return fmt.Errorf("cgroup watcher: list %q: %w", dir, err)
	}
	present := make(map[string]bool)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		uid, q, ok := s.l.ParsePodCgroup(p)
		if !ok {
			continue
		}
		if _, ok := s.interest[uid]; !ok {
			continue
		}
		present[uid] = true
		if err := s.podSeen(uid, q, p); err != nil {
			return err
		}
	}
	for uid, tp := range s.pods {
		if filepath.Dir(tp.Path) == dir && !present[uid] {
			s.podGone(uid)
		}
	}
	return nil
}

// podSeen handles a pod cgroup directory of interest that exists (or did a moment ago).
func (s *watchState) podSeen(uid string, q QoS, path string) error {
	if tp := s.pods[uid]; tp != nil {
		if tp.Path == path {
			id, err := ID(path)
			if err == nil && id == tp.CgroupID {
				return s.reconcilePod(tp)
			}
		}
		// Recreated under the same name (new id), or the same uid in another QoS
		// directory: the cgroup reported before is gone.
		s.podGone(uid)
	}
	wd, id, err := s.watchPodDir(path, uid)
	if errors.Is(err, unix.ENOENT) {
		// Removed already (nothing was reported, nothing will be), or not visible
		// yet: the resync timer looks again while the pod is untracked.
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroup watcher: pod %s: %w", uid, err)
	}
	tp := &trackedPod{
		PodCgroup:  PodCgroup{UID: uid, QoS: q, Path: path, CgroupID: id},
		wd:         wd,
		containers: make(map[string]ContainerCgroup),
	}
	s.pods[uid] = tp
	s.emit(PodCgroupCreated{tp.PodCgroup})
	return s.reconcilePod(tp)
}

func (s *watchState) podGone(uid string) {
	tp := s.pods[uid]
	if tp == nil {
		return
	}
	names := make([]string, 0, len(tp.containers))
	for name := range tp.containers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s.containerGone(tp, name)
	}
	if wt, ok := s.watches[tp.wd]; ok && wt.podUID == uid {
		s.rmWatch(tp.wd)
	}
	delete(s.pods, uid)
	s.emit(PodCgroupRemoved{tp.PodCgroup})
}

func (s *watchState) reconcilePod(tp *trackedPod) error {
	entries, err := os.ReadDir(tp.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the pod's removal events are on the way
	}
	if err != nil {
		return fmt.Errorf("cgroup watcher: list containers of pod %s: %w", tp.UID, err)
	}
	present := make(map[string]bool)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		rt, cid, ok := s.l.ParseContainerCgroup(e.Name())
		if !ok {
			continue
		}
		present[e.Name()] = true
		if err := s.containerSeen(tp, e.Name(), rt, cid); err != nil {
			return err
		}
	}
	for name := range tp.containers {
		if !present[name] {
			s.containerGone(tp, name)
		}
	}
	return nil
}

func (s *watchState) containerSeen(tp *trackedPod, name string, rt Runtime, cid string) error {
	p := tp.Path + "/" + name
	id, err := ID(p)
	if errors.Is(err, os.ErrNotExist) {
		if _, known := tp.containers[name]; known {
			s.containerGone(tp, name)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroup watcher: container %s of pod %s: %w", cid, tp.UID, err)
	}
	if c, known := tp.containers[name]; known {
		if c.CgroupID == id {
			return nil
		}
		s.containerGone(tp, name)
	}
	c := ContainerCgroup{PodUID: tp.UID, Runtime: rt, ContainerID: cid, Path: p, CgroupID: id}
	tp.containers[name] = c
	s.emit(ContainerCgroupCreated{c})
	return nil
}

func (s *watchState) containerGone(tp *trackedPod, name string) {
	if c, ok := tp.containers[name]; ok {
		delete(tp.containers, name)
		s.emit(ContainerCgroupRemoved{c})
	}
}

// handleBuffer decodes a read from the inotify fd: struct inotify_event records, each
// followed by a NUL-padded name.
func (s *watchState) handleBuffer(b []byte) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofInotifyEvent {
			return fmt.Errorf("cgroup watcher: short inotify record (%d bytes)", len(b))
		}
		wd := int32(binary.NativeEndian.Uint32(b[0:4]))
		mask := binary.NativeEndian.Uint32(b[4:8])
		nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
		end := unix.SizeofInotifyEvent + nameLen
		if end > len(b) {
			return fmt.Errorf("cgroup watcher: inotify record overruns the read (%d > %d)", end, len(b))
		}
		name, _, _ := bytes.Cut(b[unix.SizeofInotifyEvent:end], []byte{0})
		if err := s.handle(wd, mask, string(name)); err != nil {
			return err
		}
		b = b[end:]
	}
	return nil
}

func (s *watchState) handle(wd int32, mask uint32, name string) error {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		// Events were dropped: rebuild from the filesystem.
		s.overflows++
		return s.ensureParents()
	}
	wt, ok := s.watches[wd]
	if !ok {
		return nil // a watch we removed; its last events are still queued
	}
	if mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
		// The watched directory itself is gone or was renamed. On cgroup2 an rmdir
		// raises neither (see ensureParents); these come from rename(2) or from a
		// layout root that is not on cgroup2.
		s.rmWatch(wd)
		if wt.podUID != "" {
			if tp := s.pods[wt.podUID]; tp != nil && tp.wd == wd {
				s.podGone(wt.podUID)
			}
			return nil
		}
		return s.ensureParents()
	}
	if mask&unix.IN_ISDIR == 0 || !validCgroupName(name) {
		return nil
	}
	created := mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0
	child := filepath.Join(wt.path, name)

	if wt.podUID != "" {
		tp := s.pods[wt.podUID]
		if tp == nil || tp.wd != wd {
			return nil
		}
		rt, cid, ok := s.l.ParseContainerCgroup(name)
		if !ok {
			return nil
		}
		if created {
			return s.containerSeen(tp, name, rt, cid)
		}
		s.containerGone(tp, name)
		return nil
	}

	if s.onTargetPath(child) {
		// A QoS directory or one above it came or went: re-plan the parent watches.
		if _, watched := s.wdByPath[child]; watched != created {
			return s.ensureParents()
		}
		return nil
	}
	if !s.isQoSDir(wt.path) {
		return nil
	}
	uid, q, ok := s.l.ParsePodCgroup(child)
	if !ok {
		return nil
	}
	if _, interested := s.interest[uid]; !interested {
		return nil
	}
	if created {
		return s.podSeen(uid, q, child)
	}
	if tp := s.pods[uid]; tp != nil && tp.Path == child {
		s.podGone(uid)
	}
	return nil
}
