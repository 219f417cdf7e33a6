// Package kubeletsim stands in for the kubelet of one simulated node in the e2e
// harness: for each pod bound to its node it creates the pod and container cgroups
// where a kubelet with the systemd cgroup driver and containerd would, starts each
// container's command inside its cgroup (CLONE_INTO_CGROUP, so the very first exec is
// the container's), reports pod status, runs `kubectl exec`-like commands, and on
// deletion kills the processes, removes the cgroups and confirms the deletion.
//
// It owns the cgroups under its node's layout root and nothing else. It must not know
// about execgate: it behaves the same whether an agent runs or not.
package kubeletsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/cgroups"
)

// Config describes one simulated node.
type Config struct {
	Client   kubernetes.Interface
	NodeName string
	// Layout places the cgroups; its root is this node's private subtree.
	Layout cgroups.Layout
	// PodStartDelay is the time between seeing a pod bound and creating its pod
	// cgroup (the kubelet's sync loop, volume mounts); SandboxDelay the time between
	// the pod cgroup and the containers (RunPodSandbox). Zero values use defaults.
	PodStartDelay time.Duration
	SandboxDelay  time.Duration
	Logger        *zap.Logger
}

const (
	defaultPodStartDelay = 200 * time.Millisecond
	defaultSandboxDelay  = 100 * time.Millisecond
	// exitWatch is how long after a start a container counts as having exited at once
	// (denied first exec, bad command) for the status it reports.
	exitWatch = 150 * time.Millisecond
)

// Simulator is the kubelet of one node. Its methods are safe for concurrent use.
type Simulator struct {
	cfg Config
	log *zap.Logger

	mu   sync.Mutex
	pods map[types.UID]*pod // pods started or starting, by UID
	wg   sync.WaitGroup     // pod goroutines
}

type pod struct {
	uid        types.UID
	namespace  string
	name       string
	cgroup     string
	containers map[string]*container // by container name
	started    chan struct{}         // closed once every container was started (or failed to)
	stopping   bool
}

type container struct {
	name   string
	id     string // 64 hex digits, as containerd's
	cgroup string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, valid once exited is closed
}

// New returns a simulator; Run starts it.
func New(cfg Config) (*Simulator, error) {
	if cfg.Client == nil || cfg.NodeName == "" {
		return nil, errors.New("kubeletsim: Client and NodeName are required")
	}
	if cfg.Layout.Root() == "" {
		return nil, errors.New("kubeletsim: Layout is required")
	}
	if cfg.PodStartDelay == 0 {
		cfg.PodStartDelay = defaultPodStartDelay
	}
	if cfg.SandboxDelay == 0 {
		cfg.SandboxDelay = defaultSandboxDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Simulator{cfg: cfg, log: cfg.Logger.With(zap.String("node", cfg.NodeName)), pods: map[types.UID]*pod{}}, nil
}

// Run watches the node's pods until ctx ends, then kills every container and removes
// every cgroup it created.
func (s *Simulator) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.observe(ctx, obj, false) },
		UpdateFunc: func(_, obj any) { s.observe(ctx, obj, false) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			s.observe(ctx, obj, true)
		},
	}); err != nil {
		return fmt.Errorf("kubeletsim %s: watch pods: %w", s.cfg.NodeName, err)
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
	s.wg.Wait()
	s.mu.Lock()
	all := make([]*pod, 0, len(s.pods))
	for _, p := range s.pods {
		all = append(all, p)
	}
	s.mu.Unlock()
	for _, p := range all {
		s.teardown(p)
	}
	return nil
}

// observe reacts to the pod's latest state: start it once, tear it down when it is
// terminating or gone.
func (s *Simulator) observe(ctx context.Context, obj any, deleted bool) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName != s.cfg.NodeName {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	known := s.pods[p.UID]
	switch {
	case deleted || p.DeletionTimestamp != nil:
		if known != nil && known.stopping {
			return
		}
		if known == nil {
			known = &pod{uid: p.UID, namespace: p.Namespace, name: p.Name}
			s.pods[p.UID] = known
		}
		known.stopping = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.stopPod(ctx, known, !deleted)
		}()
	case known == nil:
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			return
		}
		np := &pod{uid: p.UID, namespace: p.Namespace, name: p.Name, containers: map[string]*container{}, started: make(chan struct{})}
		s.pods[p.UID] = np
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.startPod(ctx, np, p.DeepCopy())
		}()
	}
}

// startPod creates the cgroups and starts the containers the way the kubelet orders
// them: pod cgroup, sandbox, then each container in spec order.
func (s *Simulator) startPod(ctx context.Context, p *pod, spec *corev1.Pod) {
	defer close(p.started)
	log := s.log.With(zap.String("namespace", p.namespace), zap.String("pod", p.name))
	if !sleep(ctx, s.cfg.PodStartDelay) {
		return
	}
	qos := cgroups.QoS(spec.Status.QOSClass)
	podCgroup := s.cfg.Layout.PodCgroupPath(string(p.uid), qos)
	if podCgroup == "" {
		log.Error("cannot name the pod cgroup", zap.String("qos", string(qos)))
		return
	}
	if err := os.MkdirAll(podCgroup, 0o755); err != nil {
		log.Error("create pod cgroup", zap.Error(err))
		return
	}
	s.mu.Lock()
	p.cgroup = podCgroup
	stopping := p.stopping
	s.mu.Unlock()
	if stopping || !sleep(ctx, s.cfg.SandboxDelay) {
		return
	}
	var statuses []corev1.ContainerStatus
	for _, c := range spec.Spec.Containers {
		ctr, err := s.startContainer(p, qos, c)
		if err != nil {
			log.Error("start container", zap.String("container", c.Name), zap.Error(err))
			statuses = append(statuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerError", Message: err.Error()}}})
			continue
		}
		statuses = append(statuses, containerStatus(c, ctr))
	}
	if err := s.reportStatus(ctx, p, statuses); err != nil && ctx.Err() == nil {
		log.Warn("report pod status", zap.Error(err))
	}
}

func (s *Simulator) startContainer(p *pod, qos cgroups.QoS, c corev1.Container) (*container, error) {
	argv := append(append([]string{}, c.Command...), c.Args...)
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %q has no command: the simulator runs no images, give spec.containers[].command", c.Name)
	}
	id, err := containerID()
	if err != nil {
		return nil, err
	}
	dir := s.cfg.Layout.ContainerCgroupPath(string(p.uid), qos, cgroups.RuntimeContainerd, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create container cgroup: %w", err)
	}
	ctr := &container{name: c.Name, id: id, cgroup: dir, exited: make(chan struct{})}
	s.mu.Lock()
	p.containers[c.Name] = ctr
	s.mu.Unlock()
	cmd, err := commandIn(dir, argv)
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		ctr.err = err
		close(ctr.exited)
		return ctr, nil
	}
	ctr.cmd = cmd
	go func() {
		ctr.err = cmd.Wait()
		close(ctr.exited)
	}()
	select {
	case <-ctr.exited:
	case <-time.After(exitWatch):
	}
	return ctr, nil
}

// containerStatus reports a container as Running, or Terminated when its process
// is already gone (for instance killed or refused at its first exec).
func containerStatus(c corev1.Container, ctr *container) corev1.ContainerStatus {
	st := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: "containerd://" + ctr.id}
	now := metav1.Now()
	select {
	case <-ctr.exited:
		code, reason := exitCode(ctr.err), "Error"
		if ctr.cmd == nil {
			reason = "StartError"
		} else if code == 0 {
			reason = "Completed"
		}
		msg := ""
		if ctr.err != nil {
			msg = ctr.err.Error()
		}
		st.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, Message: msg, StartedAt: now, FinishedAt: now, ContainerID: st.ContainerID}
	default:
		started := true
		st.Ready, st.Started = true, &started
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
	}
	return st
}

// exitCode maps a Wait/Start error to what a runtime reports: 128+signal when killed,
// 128 when the exec itself failed (runc's "exec failed" code path).
func exitCode(err error) int32 {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int32(ws.Signal())
		}
		return int32(ee.ExitCode())
	}
	if err != nil {
		return 128
	}
	return 0
}

func (s *Simulator) reportStatus(ctx context.Context, p *pod, statuses []corev1.ContainerStatus) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := s.cfg.Client.CoreV1().Pods(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != p.uid || cur.DeletionTimestamp != nil {
			return nil
		}
		now := metav1.Now()
		ready := corev1.ConditionTrue
		phase := corev1.PodRunning
		for _, st := range statuses {
			if st.State.Running == nil {
				ready = corev1.ConditionFalse
			}
		}
		if ready == corev1.ConditionFalse {
			phase = corev1.PodRunning // some containers exited; restartPolicy decides, the simulator never restarts
		}
		cur.Status.Phase = phase
		cur.Status.HostIP = "127.0.0.1"
		cur.Status.StartTime = &now
		cur.Status.ContainerStatuses = statuses
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
		}
		_, err = s.cfg.Client.CoreV1().Pods(p.namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// stopPod kills the containers, removes the cgroups, and, for a graceful deletion,
// confirms it as the kubelet does (delete with grace period 0, UID precondition).
func (s *Simulator) stopPod(ctx context.Context, p *pod, confirm bool) {
	if p.started != nil {
		select {
		case <-p.started:
		case <-ctx.Done():
		}
	}
	s.teardown(p)
	s.mu.Lock()
	delete(s.pods, p.uid)
	s.mu.Unlock()
	if !confirm || ctx.Err() != nil {
		return
	}
	zero := int64(0)
	uid := p.uid
	err := s.cfg.Client.CoreV1().Pods(p.namespace).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
		s.log.Warn("confirm pod deletion", zap.String("namespace", p.namespace), zap.String("pod", p.name), zap.Error(err))
	}
}

// teardown kills what runs in the pod's cgroups and removes them, deepest first.
func (s *Simulator) teardown(p *pod) {
	s.mu.Lock()
	podCgroup := p.cgroup
	var ctrs []*container
	for _, c := range p.containers {
		ctrs = append(ctrs, c)
	}
	s.mu.Unlock()
	for _, c := range ctrs {
		testenv.RemoveCgroup(c.cgroup)
		if c.cmd != nil {
			<-c.exited
		}
	}
	if podCgroup != "" {
		testenv.RemoveCgroup(podCgroup)
	}
}

// ErrNotRunning is returned by Exec for a pod or container that has no running cgroup.
var ErrNotRunning = errors.New("container not running on this node")

// Exec runs argv inside the container's cgroup, like `kubectl exec` (the runtime
// starts the process in the container's cgroup), and returns its combined output.
func (s *Simulator) Exec(ctx context.Context, namespace, podName, containerName string, argv ...string) (string, error) {
	cmd, err := s.ExecCommand(ctx, namespace, podName, containerName, argv...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ExecCommand is Exec's command, not yet started, for callers that need the process.
func (s *Simulator) ExecCommand(ctx context.Context, namespace, podName, containerName string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	dir, err := s.ContainerCgroup(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	return commandInContext(ctx, dir, argv)
}

// ContainerCgroup returns the cgroup directory of a started container.
func (s *Simulator) ContainerCgroup(namespace, podName, containerName string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pods {
		if p.namespace != namespace || p.name != podName || p.stopping {
			continue
		}
		if c := p.containers[containerName]; c != nil {
			return c.cgroup, nil
		}
	}
	return "", fmt.Errorf("%s/%s container %q on %s: %w", namespace, podName, containerName, s.cfg.NodeName, ErrNotRunning)
}

// ContainerExit reports whether the container's main process has exited, and how.
func (s *Simulator) ContainerExit(namespace, podName, containerName string) (exited bool, err error) {
	s.mu.Lock()
	var c *container
	for _, p := range s.pods {
		if p.namespace == namespace && p.name == podName {
			c = p.containers[containerName]
		}
	}
	s.mu.Unlock()
	if c == nil {
		return false, fmt.Errorf("%s/%s container %q: %w", namespace, podName, containerName, ErrNotRunning)
	}
	select {
	case <-c.exited:
		return true, c.err
	default:
		return false, nil
	}
}

// Pods is the number of pods the simulator holds cgroups or goroutines for.
func (s *Simulator) Pods() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pods)
}

func commandIn(dir string, argv []string) (*exec.Cmd, error) {
	return commandInContext(context.Background(), dir, argv)
}

// commandInContext starts argv directly inside cgroup dir with clone3
// CLONE_INTO_CGROUP (Linux 5.7), so its first execve is already the container's.
func commandInContext(ctx context.Context, dir string, argv []string) (*exec.Cmd, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd()), Pdeathsig: syscall.SIGKILL}
	// Cancel references f, so the cgroup fd stays open as long as cmd can still be
	// started; the *os.File finalizer closes it once cmd is garbage.
	cmd.Cancel = func() error {
		runtime.KeepAlive(f)
		return cmd.Process.Kill()
	}
	return cmd, nil
}

func containerID() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("container id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
