package webhooktest

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/execgate/execgate/api/v1alpha1"
)

// NS is the namespace of Pod and Policy.
const NS = "shop"

// Scheme knows core/v1 and execgate's API.
func Scheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Pod is a pod in NS with containers init, app and sidecar, labelled with policy unless
// it is empty, on node (empty: not scheduled).
func Pod(name, uid, policy, node string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: NS, Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{
			NodeName:       node,
			InitContainers: []corev1.Container{{Name: "init"}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "sidecar"}},
		},
		Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable},
	}
	if policy != "" {
		p.Labels = map[string]string{v1alpha1.PolicyLabel: policy}
	}
	return p
}

// Policy is a Protect WorkloadPolicy in NS with rules for app and "*".
func Policy(name string, generation int64) *v1alpha1.WorkloadPolicy {
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: NS, Name: name, UID: types.UID(name + "-uid"), Generation: generation},
		Spec: v1alpha1.WorkloadPolicySpec{
			Mode: v1alpha1.ModeProtect,
			RulesByContainer: v1alpha1.RulesByContainer{
				"app": {Executables: []string{"/usr/bin/app"}},
				"*":   {Executables: []string{"/bin/"}},
			},
		},
	}
}

// ReadOnlyRoot sets readOnlyRootFilesystem on the pod's init and regular containers.
func ReadOnlyRoot(pod *corev1.Pod) *corev1.Pod {
	ro := true
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			list[i].SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: &ro}
		}
	}
	return pod
}

// Served is the value of the controller's metric name with labels, as served.
func Served(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// DrainEvents returns the Events recorded so far.
func DrainEvents(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// HasEvent reports whether one of evs has reason.
func HasEvent(evs []string, reason string) bool {
	for _, e := range evs {
		if strings.Contains(e, " "+reason+" ") {
			return true
		}
	}
	return false
}
