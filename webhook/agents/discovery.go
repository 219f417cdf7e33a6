package agents

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	toolscache "k8s.io/client-go/tools/cache"
)

// AgentDirectory maps a node name to the address ("ip:port") of the agent on that node.
//
// It is fed either by a static map (ParseStaticEndpoints, for tests without agent pods) or
// by the pod informer through its ResourceEventHandler methods. The informer's goroutine
// is the only writer; Lookup may be called from any goroutine (mu guards the maps).
type AgentDirectory struct {
	namespace string
	selector  labels.Selector
	port      int
	log       *zap.Logger
	// onChange is called, without mu held, with a node whose address changed or vanished.
	onChange func(node string)

	mu     sync.RWMutex
	static map[string]string
	// byNode holds the ready agent pods of each node: pod name -> address. During a
	// DaemonSet rollout a node can briefly run two.
	byNode map[string]map[string]string
	// podNode remembers where each agent pod was, so a delete finds it.
	podNode map[string]string
}

// NewAgentDirectory watches nothing yet: register it with the pod informer
// (AddEventHandler) to follow the agent pods matching selector in namespace.
func NewAgentDirectory(namespace string, selector labels.Selector, port int, log *zap.Logger) *AgentDirectory {
	if log == nil {
		log = zap.NewNop()
	}
	return &AgentDirectory{
		namespace: namespace, selector: selector, port: port, log: log,
		byNode: map[string]map[string]string{}, podNode: map[string]string{},
	}
}

// NewStaticAgentDirectory serves a fixed node -> address map and ignores pods.
func NewStaticAgentDirectory(endpoints map[string]string) *AgentDirectory {
	d := NewAgentDirectory("", labels.Nothing(), 0, nil)
	d.static = endpoints
	return d
}

// ParseStaticEndpoints parses "node-1=127.0.0.1:9443,node-2=10.0.0.2:9443".
func ParseStaticEndpoints(s string) (map[string]string, error) {
	out := map[string]string{}
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		node, addr, ok := strings.Cut(entry, "=")
		if !ok || node == "" || addr == "" {
			return nil, fmt.Errorf("agent endpoint %q: want node=host:port", entry)
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return nil, fmt.Errorf("agent endpoint %q: address %q is not host:port", entry, addr)
		}
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("agent endpoint %q: node %q listed twice", entry, node)
		}
		out[node] = addr
	}
	return out, nil
}

// Lookup returns the agent address of node.
func (d *AgentDirectory) Lookup(node string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.static != nil {
		addr, ok := d.static[node]
		return addr, ok
	}
	addr := d.lookupLocked(node)
	return addr, addr != ""
}

// OnAdd implements toolscache.ResourceEventHandler.
func (d *AgentDirectory) OnAdd(obj any, _ bool) { d.observe(obj) }

// OnUpdate implements toolscache.ResourceEventHandler.
func (d *AgentDirectory) OnUpdate(_, obj any) { d.observe(obj) }

// OnDelete implements toolscache.ResourceEventHandler.
func (d *AgentDirectory) OnDelete(obj any) {
	if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok || !d.isAgent(pod) {
		return
	}
	d.set(pod.Name, "", "")
}

func (d *AgentDirectory) isAgent(pod *corev1.Pod) bool {
	return d.static == nil && pod.Namespace == d.namespace && d.selector.Matches(labels.Set(pod.Labels))
}

func (d *AgentDirectory) observe(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !d.isAgent(pod) {
		return
	}
	if pod.DeletionTimestamp != nil || !agentReady(pod) {
		d.set(pod.Name, "", "")
		return
	}
	d.set(pod.Name, pod.Spec.NodeName, net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(d.port)))
}

// agentReady: only a Running, Ready pod with an IP can answer a push.
func agentReady(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" || pod.Spec.NodeName == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// set records that agent pod name serves node at addr; node "" removes the pod.
func (d *AgentDirectory) set(name, node, addr string) {
	var changed []string
	d.mu.Lock()
	before := map[string]string{}
	if old, ok := d.podNode[name]; ok {
		before[old] = d.lookupLocked(old)
		delete(d.byNode[old], name)
		if len(d.byNode[old]) == 0 {
			delete(d.byNode, old)
		}
		delete(d.podNode, name)
	}
	if node != "" {
		if _, ok := before[node]; !ok {
			before[node] = d.lookupLocked(node)
		}
		if d.byNode[node] == nil {
			d.byNode[node] = map[string]string{}
		}
		d.byNode[node][name] = addr
		d.podNode[name] = node
	}
	for n, old := range before {
		if now := d.lookupLocked(n); now != old {
			changed = append(changed, n)
			d.log.Info("agent endpoint changed", zap.String("node", n), zap.String("from", old), zap.String("to", now), zap.String("agentPod", name))
		}
	}
	d.mu.Unlock()
	if d.onChange != nil {
		for _, n := range changed {
			d.onChange(n)
		}
	}
}

func (d *AgentDirectory) lookupLocked(node string) string {
	pods := d.byNode[node]
	best := ""
	for name := range pods {
		if best == "" || name < best {
			best = name
		}
	}
	if best == "" {
		return ""
	}
	return pods[best]
}
