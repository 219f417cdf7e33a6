// Package nri makes the agent an NRI plugin (github.com/containerd/nri) of
// the node's container runtime, which tells it each container's identity
// (pod, id, name) before the container runs: CreateContainer before its
// cgroup exists, StartContainer after runc create and before runc start, so
// before the container's first exec. Binding the container to its own rules
// there closes the window in which a container runs under its pod's union of
// every container's rules. Where the runtime has no NRI (or it is disabled)
// the agent goes on learning names from pod status, and says so.
package nri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"go.uber.org/zap"

	"github.com/execgate/execgate/api/v1alpha1"
)

// DefaultSocket is the runtime's NRI socket (containerd, CRI-O).
const DefaultSocket = api.DefaultSocketPath

// Pod is a container's pod as the runtime knows it.
type Pod struct {
	UID, Namespace, Name string
	// Policy is the pod's execgate.io/policy label ("" when not labelled).
	Policy string
}

// Backend is what the plugin tells the agent.
type Backend interface {
	// ContainerCreating: container id of pod is named name; its cgroup
	// does not exist yet.
	ContainerCreating(pod Pod, id, name string) error
	// ContainerStarting: the container's cgroup exists and nothing of the
	// container has run; the container must be bound when this returns
	// without error. An error fails the container's start (the kubelet
	// retries it), so a labelled pod's container never starts unbound.
	ContainerStarting(ctx context.Context, pod Pod, id, name string) error
	// ContainerRunning: the container runs already (Synchronize); bind it
	// if its pod is known, without waiting.
	ContainerRunning(pod Pod, id, name string) error
}

func podOf(p *api.PodSandbox) Pod {
	return Pod{UID: p.GetUid(), Namespace: p.GetNamespace(), Name: p.GetName(), Policy: p.GetLabels()[v1alpha1.PolicyLabel]}
}

// Plugin connects to the runtime's NRI socket and keeps reconnecting (a
// runtime restart closes the connection) until its context ends.
type Plugin struct {
	Socket  string
	Backend Backend
	Log     *zap.Logger
	// Retry is the wait between connection attempts (default 2 s).
	Retry time.Duration

	connected atomic.Bool
	mu        sync.Mutex
	created   map[string]time.Time // container id -> its CreateContainer, until StartContainer
}

// maxCreated bounds the containers created and not started yet that are remembered.
const maxCreated = 4096

// Connected reports whether the runtime is connected now.
func (p *Plugin) Connected() bool { return p.connected.Load() }

// Run serves the runtime until ctx ends.
func (p *Plugin) Run(ctx context.Context) {
	retry := p.Retry
	if retry <= 0 {
		retry = 2 * time.Second
	}
	warned := false
	for ctx.Err() == nil {
		err := p.serve(ctx)
		p.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if !warned || err == nil {
			p.Log.Warn("no NRI connection to the container runtime: container names come from pod status, and a container runs under its pod's union of rules until the kubelet reports it",
				zap.String("socket", p.Socket), zap.Error(err))
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

func (p *Plugin) serve(ctx context.Context) error {
	if _, err := os.Stat(p.Socket); err != nil {
		return err
	}
	// A runtime that honours failure policies (NRI 0.9+) fails a request this
	// plugin could not answer instead of running the container without it.
	s, err := stub.New(&handler{p: p}, stub.WithPluginName("execgate"), stub.WithPluginIdx("00"),
		stub.WithSocketPath(p.Socket), stub.WithLogger(nriLogger{p.Log}),
		stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: true, KeepConnected: true}))
	if err != nil {
		return fmt.Errorf("nri plugin: %w", err)
	}
	if err := s.Start(ctx); err != nil {
		return fmt.Errorf("register with the runtime: %w", err)
	}
	p.connected.Store(true)
	p.Log.Info("NRI plugin registered: containers are bound to their own rules before they start",
		zap.String("socket", p.Socket), zap.String("runtime_nri", s.RuntimeNRIVersion()))
	done := make(chan struct{})
	go func() { s.Wait(); close(done) }()
	select {
	case <-ctx.Done():
		s.Stop()
		<-done
		return nil
	case <-done:
		return errors.New("the runtime closed the NRI connection")
	}
}

// handler is the stub's plugin: the events it implements are the ones it subscribes to.
type handler struct{ p *Plugin }

func (h *handler) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	byID := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		byID[pod.GetId()] = pod
	}
	var errs []error
	for _, c := range ctrs {
		if err := h.p.Backend.ContainerRunning(podOf(byID[c.GetPodSandboxId()]), c.GetId(), c.GetName()); err != nil {
			errs = append(errs, err)
		}
	}
	h.p.Log.Info("NRI synchronized", zap.Int("pods", len(pods)), zap.Int("containers", len(ctrs)), zap.Error(errors.Join(errs...)))
	return nil, nil // an error here would make the runtime drop the plugin: bind failures are logged
}

func (h *handler) CreateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	h.p.mu.Lock()
	if h.p.created == nil || len(h.p.created) >= maxCreated {
		h.p.created = map[string]time.Time{}
	}
	h.p.created[c.GetId()] = time.Now()
	h.p.mu.Unlock()
	if err := h.p.Backend.ContainerCreating(podOf(pod), c.GetId(), c.GetName()); err != nil {
		h.p.Log.Error("NRI CreateContainer", zap.String("pod_uid", pod.GetUid()), zap.String("container", c.GetName()), zap.Error(err))
	}
	return nil, nil, nil
}

func (h *handler) StartContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	err := h.p.Backend.ContainerStarting(ctx, podOf(pod), c.GetId(), c.GetName())
	h.p.mu.Lock()
	created, ok := h.p.created[c.GetId()]
	delete(h.p.created, c.GetId())
	h.p.mu.Unlock()
	fields := []zap.Field{zap.String("namespace", pod.GetNamespace()), zap.String("pod", pod.GetName()),
		zap.String("container", c.GetName()), zap.String("container_id", c.GetId())}
	if ok {
		fields = append(fields, zap.Duration("since_create", time.Since(created)))
	}
	if err != nil {
		h.p.Log.Error("NRI StartContainer: container not bound by name", append(fields, zap.Error(err))...)
		return err
	}
	if podOf(pod).Policy != "" {
		h.p.Log.Info("container bound by name before its start", fields...)
	}
	return nil
}

func (h *handler) Shutdown(context.Context) { h.p.Log.Info("the runtime shut the NRI plugin down") }

// nriLogger routes the NRI library's log through zap.
type nriLogger struct{ l *zap.Logger }

func (n nriLogger) Debugf(_ context.Context, f string, a ...any) { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n nriLogger) Infof(_ context.Context, f string, a ...any)  { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n nriLogger) Warnf(_ context.Context, f string, a ...any)  { n.l.Warn(fmt.Sprintf(f, a...)) }
func (n nriLogger) Errorf(_ context.Context, f string, a ...any) { n.l.Error(fmt.Sprintf(f, a...)) }
