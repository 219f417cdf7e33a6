package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/execgate/execgate/internal/version"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// Run adopts what the kernel already enforces, then watches cgroups, fans
// out exec events, sweeps dead state every GCInterval and (if configured)
// runs the backstop watch, until ctx ends or one of them fails. It may be
// called once; it closes every subscriber's channel when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if !a.runCalled.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	defer a.subs.closeAll()
	if err := a.adopt(); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.watcher.Run(ctx) })
	g.Go(func() error { a.handleCgroupEvents(ctx); return nil })
	g.Go(func() error { a.fanOutEvents(ctx); return nil })
	g.Go(func() error { a.gcLoop(ctx); return nil })
	g.Go(func() error { a.resyncLearnt(ctx); return nil })
	g.Go(func() error { a.checkLoaders(ctx); return nil })
	if a.opts.Backstop != nil {
		g.Go(func() error { return a.runBackstop(ctx) })
	}
	a.ready.Store(true)
	a.log.Info("agent running", zap.String("version", version.Version), zap.String("revision", version.Revision()), zap.String("attach", string(a.enf.AttachMode())), zap.String("cgroup_root", a.layout.Root()))
	err := g.Wait()
	a.ready.Store(false)
	return err
}

// adopt rebuilds the pod table from the bindings a previous agent left in
// the kernel and the pod cgroups that exist, so a restart keeps (and keeps
// tracking) every enforced pod.
func (a *Agent) adopt() error {
	snap, err := a.layout.Scan()
	if err != nil {
		return fmt.Errorf("agent start: %w", err)
	}
	podByID := map[uint64]cgroups.PodCgroup{}
	for _, p := range snap.Pods {
		podByID[p.CgroupID] = p
	}
	ctrByID := map[uint64]cgroups.ContainerCgroup{}
	qosOf := map[string]cgroups.QoS{}
	for _, p := range snap.Pods {
		qosOf[p.UID] = p.QoS
	}
	for _, c := range snap.Containers {
		ctrByID[c.CgroupID] = c
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	podOf := func(uid string, qos cgroups.QoS, key enforcer.PolicyKey) *podState {
		p := a.pods[uid]
		if p == nil {
			p = &podState{uid: uid, qos: qos, policy: key, names: map[string]string{}, containers: map[string]uint64{}}
			a.pods[uid] = p
		}
		return p
	}
	for _, b := range a.enf.Bindings() {
		if pc, ok := podByID[b.CgroupID]; ok {
			p := podOf(pc.UID, pc.QoS, b.Policy)
			p.podCgroup = b.CgroupID
			a.owners[b.CgroupID] = owner{uid: pc.UID}
			continue
		}
		if cc, ok := ctrByID[b.CgroupID]; ok {
			p := podOf(cc.PodUID, qosOf[cc.PodUID], b.Policy)
			p.containers[cc.ContainerID] = b.CgroupID
			if b.Container != enforcer.UnionContainer {
				p.names[cc.ContainerID] = b.Container
			}
			a.owners[b.CgroupID] = owner{uid: cc.PodUID, container: b.Container}
		}
		// Anything else belongs to a cgroup that is gone: the sweep unbinds it.
	}
	for uid, p := range a.pods {
		if err := a.watcher.AddPod(uid); err != nil {
			return fmt.Errorf("agent start: %w", err)
		}
		if p.podCgroup == 0 {
			a.markPendingLocked(uid)
		}
	}
	a.learnAdoptedLocked()
	a.log.Info("adopted enforced pods", zap.Int("pods", len(a.pods)), zap.Int("bindings", len(a.owners)),
		zap.Int("pod_cgroups", len(snap.Pods)))
	return nil
}

// handleCgroupEvents binds cgroups as the kubelet creates them and unbinds
// them as they go. Errors are logged here: there is no caller to return to.
func (a *Agent) handleCgroupEvents(ctx context.Context) {
	events := a.watcher.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			a.handleCgroupEvent(ev)
		}
	}
}

func (a *Agent) handleCgroupEvent(ev cgroups.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch ev := ev.(type) {
	case cgroups.PodCgroupCreated:
		p := a.pods[ev.UID]
		if p == nil || p.podCgroup == ev.CgroupID {
			return
		}
		if err := a.bindPodCgroupLocked(p, ev.CgroupID); err != nil {
			a.podLog(p).Error("pod cgroup not bound", zap.Error(err))
			return
		}
		a.pending.Remove(p.uid)
		a.podLog(p).Info("pod cgroup bound", zap.Uint64("cgroup_id", ev.CgroupID))
	case cgroups.ContainerCgroupCreated:
		p := a.pods[ev.PodUID]
		if p == nil {
			return
		}
		if err := a.bindContainerLocked(p, ev.ContainerID, ev.CgroupID); err != nil {
			a.podLog(p).Error("container cgroup not bound", zap.String("container_id", ev.ContainerID), zap.Error(err))
		}
	case cgroups.ContainerCgroupRemoved:
		p := a.pods[ev.PodUID]
		if p == nil || p.containers[ev.ContainerID] != ev.CgroupID {
			return
		}
		delete(p.containers, ev.ContainerID)
		if _, ok := a.owners[ev.CgroupID]; ok {
			a.unbindLocked(ev.CgroupID)
		}
	case cgroups.PodCgroupRemoved:
		p := a.pods[ev.UID]
		if p == nil || p.podCgroup != ev.CgroupID {
			return
		}
		a.dropPodCgroupsLocked(p)
		a.podLog(p).Info("pod cgroup removed; pod waits for removal or a new cgroup")
	}
}

// dropPodCgroupsLocked unbinds every cgroup of a pod whose cgroup is gone;
// the pod stays known (pending) until RemovePod or expiry.
func (a *Agent) dropPodCgroupsLocked(p *podState) {
	for cg, o := range a.owners {
		if o.uid == p.uid {
			a.unbindLocked(cg)
		}
	}
	p.podCgroup = 0
	clear(p.containers)
	a.markPendingLocked(p.uid)
}

func (a *Agent) podLog(p *podState) *zap.Logger {
	return a.log.With(zap.String("namespace", p.namespace), zap.String("pod", p.name),
		zap.String("pod_uid", p.uid), zap.String("policy", string(p.policy)))
}

func (a *Agent) gcLoop(ctx context.Context) {
	every(ctx, a.opts.GCInterval, func() {
		a.Sweep()
		a.verifyWaitingPods(ctx)
	})
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Sweep unbinds cgroups that no longer exist, forgets pods that waited too
// long for their cgroup, and unloads policies no pod uses. It returns how
// many things it removed.
func (a *Agent) Sweep() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	removed := 0
	for _, b := range a.enf.Bindings() {
		alive, err := cgroups.ExistsID(a.layout.Root(), b.CgroupID)
		if err != nil {
			a.log.Warn("gc: cannot tell whether a bound cgroup exists", zap.Uint64("cgroup_id", b.CgroupID), zap.Error(err))
			continue
		}
		if alive {
			continue
		}
		o, owned := a.owners[b.CgroupID]
		if err := a.enf.Unbind(b.CgroupID); err != nil {
			a.log.Error("gc: unbind dead cgroup", zap.Uint64("cgroup_id", b.CgroupID), zap.Error(err))
			continue
		}
		delete(a.owners, b.CgroupID)
		removed++
		if p := a.pods[o.uid]; owned && p != nil {
			if p.podCgroup == b.CgroupID {
				a.dropPodCgroupsLocked(p)
			} else {
				for cid, cg := range p.containers {
					if cg == b.CgroupID {
						delete(p.containers, cid)
					}
				}
			}
		}
	}
	deadline := time.Now().Add(-a.opts.PendingTTL)
	for _, uid := range a.pending.Keys() {
		if since, ok := a.pending.Peek(uid); ok && since.Before(deadline) {
			a.log.Info("gc: pod cgroup never appeared; forgetting the pod", zap.String("pod_uid", uid))
			if err := a.forgetPodLocked(uid); err != nil {
				a.log.Error("gc: forget expired pod", zap.String("pod_uid", uid), zap.Error(err))
				continue
			}
			removed++
		}
	}
	bound := map[enforcer.PolicyKey]bool{}
	for _, b := range a.enf.Bindings() {
		bound[b.Policy] = true
	}
	for _, lp := range a.enf.Policies() {
		if bound[lp.Key] || a.policyUsersLocked(lp.Key, "") > 0 {
			continue
		}
		if err := a.enf.DeletePolicy(lp.Key); err != nil && !errors.Is(err, enforcer.ErrNotFound) {
			a.log.Error("gc: unload unused policy", zap.String("policy", string(lp.Key)), zap.Error(err))
			continue
		}
		delete(a.policyUIDs, lp.Key)
		removed++
	}
	a.retryCapacityHoldsLocked()
	if removed > 0 {
		a.metrics.gcRemoved(removed)
		a.log.Info("gc sweep removed dead state", zap.Int("removed", removed))
	}
	return removed
}

// verifyWaitingPods asks the API server about every pod that has waited for its
// cgroup longer than two GC periods. A pod the API server no longer has (or has
// under another UID) is forgotten for good. This is what makes the agent converge
// when a deletion event was missed (watch gap across an API server restart) or a
// push raced past it: without it such a pod would hold its policy until PendingTTL.
// The API calls are made without holding a.mu.
func (a *Agent) verifyWaitingPods(ctx context.Context) {
	if a.opts.Backstop == nil || a.opts.Backstop.Kube == nil {
		return
	}
	type waiting struct{ uid, namespace, name string }
	var check []waiting
	cutoff := time.Now().Add(-2 * a.opts.GCInterval)
	a.mu.Lock()
	for _, uid := range a.pending.Keys() {
		since, ok := a.pending.Peek(uid)
		if p := a.pods[uid]; ok && p != nil && since.Before(cutoff) && p.name != "" {
			check = append(check, waiting{uid, p.namespace, p.name})
		}
	}
	a.mu.Unlock()
	for _, w := range check {
		if ctx.Err() != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pod, err := a.opts.Backstop.Kube.CoreV1().Pods(w.namespace).Get(cctx, w.name, metav1.GetOptions{})
		cancel()
		switch {
		case apierrors.IsNotFound(err), err == nil && string(pod.UID) != w.uid,
			err == nil && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed):
			if removed, derr := a.PodDeleted(ctx, w.uid); derr != nil {
				a.log.Warn("gc: forget deleted pod", zap.String("pod_uid", w.uid), zap.Error(derr))
			} else if removed {
				a.log.Info("gc: pod no longer exists in the API server; forgotten", zap.String("namespace", w.namespace),
					zap.String("pod", w.name), zap.String("pod_uid", w.uid))
			}
		case err != nil:
			a.log.Debug("gc: cannot check waiting pod", zap.String("pod_uid", w.uid), zap.Error(err))
		}
	}
}
