package helm_test

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

func decodeAs[T any](t *testing.T, objs []*unstructured.Unstructured, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			var out T
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &out); err != nil {
				t.Fatalf("%s %s: %v", kind, name, err)
			}
			return &out
		}
	}
	return nil
}

func secretVolumes(spec corev1.PodSpec) []string {
	var out []string
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			out = append(out, v.Secret.SecretName)
		}
	}
	return out
}

// TestChartNodeIdentity: with either issuer, the agents get no shared key. Before issue 14
// the DaemonSet mounted one Secret holding the same serving key for every node, and the
// controller verified a fixed name any agent carried; now the DaemonSet mounts no Secret at
// all (each agent requests a certificate naming its node, --tls-request-dir), the agent CA
// and its key are mounted by the controller only, which signs for the agents' service
// account alone, and a NetworkPolicy admits only the controller pods to the agent port.
// On the old chart the "no Secret on agent nodes" check failed.
func TestChartNodeIdentity(t *testing.T) {
	for _, vs := range []struct {
		name string
		args []string
	}{
		{"chart issuer", nil},
		{"cert-manager", []string{"--set", "certManager.enabled=true"}},
	} {
		t.Run(vs.name, func(t *testing.T) {
			objs := renderObjects(t, vs.args...)
			ds := decodeAs[appsv1.DaemonSet](t, objs, "DaemonSet", "execgate-agent")
			dep := decodeAs[appsv1.Deployment](t, objs, "Deployment", "execgate-controller")
			np := decodeAs[networkingv1.NetworkPolicy](t, objs, "NetworkPolicy", "execgate-agent")
			if ds == nil || dep == nil {
				t.Fatal("agent DaemonSet or controller Deployment not rendered")
			}
			if s := secretVolumes(ds.Spec.Template.Spec); len(s) != 0 {
				t.Errorf("agent pods mount Secrets %v: a key shared by every node (or the CA's) would be readable on each node", s)
			}
			agentArgs := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
			if !strings.Contains(agentArgs, "--tls-request-dir=") || strings.Contains(agentArgs, "--tls-cert-file=") {
				t.Errorf("agent does not request its own certificate: %s", agentArgs)
			}
			if s := secretVolumes(dep.Spec.Template.Spec); !slices.Contains(s, "execgate-agent-ca") {
				t.Errorf("controller mounts %v, not the agent CA it signs with", s)
			}
			ctrlArgs := dep.Spec.Template.Spec.Containers[0].Args
			for _, want := range []string{"--agent-signer-cert-file=", "--agent-signer-key-file=", "--agent-client-dir=",
				"--agent-service-account=execgate-system/execgate-agent", "--agent-ca-bundle-configmap=execgate-system/execgate-agent-ca-bundle"} {
				if !slices.ContainsFunc(ctrlArgs, func(a string) bool { return strings.HasPrefix(a, want) }) {
					t.Errorf("controller arguments lack %s", want)
				}
			}
			if slices.ContainsFunc(ctrlArgs, func(a string) bool { return strings.HasPrefix(a, "--agent-server-name") }) {
				t.Error("controller still verifies one shared agent name")
			}
			if np == nil {
				t.Fatal("no NetworkPolicy for the agents")
			}
			var grpcFrom []networkingv1.NetworkPolicyPeer
			for _, r := range np.Spec.Ingress {
				for _, p := range r.Ports {
					if p.Port != nil && p.Port.IntValue() == 9443 {
						grpcFrom = append(grpcFrom, r.From...)
						if len(r.From) == 0 {
							t.Error("agent gRPC port open to every peer")
						}
					}
				}
			}
			if len(grpcFrom) != 1 || grpcFrom[0].PodSelector == nil || grpcFrom[0].NamespaceSelector != nil ||
				grpcFrom[0].PodSelector.MatchLabels["app.kubernetes.io/component"] != "controller" {
				t.Errorf("agent gRPC port admits %+v, want the controller pods only", grpcFrom)
			}
		})
	}
}
