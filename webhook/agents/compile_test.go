package agents_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

func TestCompilePodPolicyRejectsInvalidPolicy(t *testing.T) {
	p := webhooktest.Policy("web", 1)
	p.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{"relative/path"}}
	if _, err := agents.CompilePodPolicy(webhooktest.Pod("a", "uid-a", "web", "node-a"), "node-a", p, ""); err == nil || !strings.Contains(err.Error(), "relative/path") {
		t.Fatalf("err = %v, want it to name the bad path", err)
	}
}

func TestPodQOSClass(t *testing.T) {
	t.Parallel()
	if got := agents.PodQOSClass(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}); got != corev1.PodQOSBestEffort {
		t.Errorf("no resources: %s", got)
	}
}
