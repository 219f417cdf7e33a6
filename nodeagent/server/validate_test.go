package server

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// validApply returns a request that passes validation; tests mutate a copy.
func validApply() *agentv1.ApplyPodPolicyRequest {
	return &agentv1.ApplyPodPolicyRequest{
		RequestId: "7d9b1c2e-0f4a-4b8e-9a51-2f0c3d4e5f60",
		Pod: &agentv1.Pod{
			Uid:       "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
			Namespace: "shop",
			Name:      "cart-7c9f8d6b5-x2x4z",
			NodeName:  "node-a",
			QosClass:  agentv1.QOSClass_QOS_CLASS_BURSTABLE,
			Containers: []*agentv1.Container{
				{Name: "app", ContainerId: "containerd://3f2a9c0d1e"},
				{Name: "sidecar"},
			},
		},
		Policy: &agentv1.Policy{
			Uid:        "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
			Namespace:  "shop",
			Name:       "cart",
			Generation: 3,
			Mode:       agentv1.Mode_MODE_PROTECT,
			RulesByContainer: map[string]*agentv1.Rules{
				"app":     {Executables: []string{"/usr/bin/cart", "/bin/sh", "/usr/bin/cart", "/usr/lib/cart/"}},
				"sidecar": {Executables: []string{"/envoy"}},
			},
		},
	}
}

func TestValidateApplyPodPolicyConverts(t *testing.T) {
	pp, err := validateApplyPodPolicy(validApply())
	if err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	if pp.Pod.QoSClass != podpolicy.QoSBurstable || pp.Policy.Mode != podpolicy.ModeProtect || pp.Policy.Version != 3 {
		t.Errorf("converted pod/policy = %+v / %+v", pp.Pod, pp.Policy)
	}
	// Sorted and deduplicated.
	want := []string{"/bin/sh", "/usr/bin/cart", "/usr/lib/cart/"}
	if got := pp.Policy.RulesByContainer["app"]; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("app rules = %q, want %q", got, want)
	}
	if pp.Policy.Key() != "shop/cart" || pp.Policy.Entries() != 4 {
		t.Errorf("key %q entries %d", pp.Policy.Key(), pp.Policy.Entries())
	}
	if len(pp.Pod.Containers) != 2 || pp.Pod.Containers[0].ContainerID != "containerd://3f2a9c0d1e" {
		t.Errorf("containers = %+v", pp.Pod.Containers)
	}
}

func TestValidateApplyPodPolicyRefuses(t *testing.T) {
	many := func(n int, f func(i int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	tests := []struct {
		name      string
		mutate    func(r *agentv1.ApplyPodPolicyRequest)
		wantField string
		wantText  string
	}{
		{"no pod", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod = nil }, "pod", "is required"},
		{"no policy", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy = nil }, "policy", "is required"},
		{"empty pod uid", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Uid = "" }, "pod.uid", "is required"},
		{"uppercase uid", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Uid = "0F8E7D6C-5B4A" }, "pod.uid", "lowercase"},
		{"long uid", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Uid = strings.Repeat("a", 65) }, "pod.uid", "at most 64"},
		{"uid with slash", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Uid = "../etc" }, "policy.uid", "lowercase"},
		{"namespace uppercase", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Namespace = "Shop" }, "pod.namespace", "DNS-1123 label"},
		{"namespace too long", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Namespace = strings.Repeat("a", 64) }, "policy.namespace", "63"},
		{"namespace leading dash", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Namespace = "-shop" }, "pod.namespace", "DNS-1123 label"},
		{"pod name empty", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Name = "" }, "pod.name", "is required"},
		{"pod name underscore", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Name = "cart_1" }, "pod.name", "DNS-1123 subdomain"},
		{"pod name empty label", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Name = "cart..1" }, "pod.name", "DNS-1123 subdomain"},
		{"node name missing", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.NodeName = "" }, "pod.node_name", "is required"},
		{"policy name too long", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Name = strings.Repeat("a.", 127) + "aa" }, "policy.name", "253"},
		{"qos unspecified", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.QosClass = agentv1.QOSClass_QOS_CLASS_UNSPECIFIED }, "pod.qos_class", "QOS_CLASS_UNSPECIFIED"},
		{"qos unknown number", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.QosClass = 42 }, "pod.qos_class", "42"},
		{"mode unspecified", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Mode = agentv1.Mode_MODE_UNSPECIFIED }, "policy.mode", "MODE_PROTECT"},
		{"mode unknown", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Mode = 9 }, "policy.mode", "9"},
		{"generation zero", func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Generation = 0 }, "policy.generation", "at least 1"},
		{"no containers", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Containers = nil }, "pod.containers", "is empty"},
		{"too many containers", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Pod.Containers = nil
			for i := 0; i < 65; i++ {
				r.Pod.Containers = append(r.Pod.Containers, &agentv1.Container{Name: "c" + strings.Repeat("x", i%5) + string(rune('a'+i%26))})
			}
		}, "pod.containers", "at most 64"},
		{"duplicate container", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Containers[1].Name = "app" }, "pod.containers[1].name", "twice"},
		{"container name invalid", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Containers[0].Name = "App" }, "pod.containers[0].name", "DNS-1123 label"},
		{"container id without runtime", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Containers[0].ContainerId = "3f2a9c0d1e" }, "pod.containers[0].container_id", "<runtime>://<id>"},
		{"container id with slash", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Containers[0].ContainerId = "containerd://a/b" }, "pod.containers[0].container_id", "invalid id"},
		{"rules container invalid", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["Bad_Name"] = &agentv1.Rules{}
		}, `policy.rules_by_container["Bad_Name"]`, "DNS-1123 label"},
		{"relative path", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables[1] = "bin/sh"
		}, `policy.rules_by_container["app"].executables[1]`, "absolute path"},
		{"empty path", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables[0] = ""
		}, `policy.rules_by_container["app"].executables[0]`, "is empty"},
		{"nul byte", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables[0] = "/bin/sh\x00x"
		}, `policy.rules_by_container["app"].executables[0]`, "NUL"},
		{"double slash", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/usr//bin/envoy"
		}, `policy.rules_by_container["sidecar"].executables[0]`, `"//"`},
		{"dot segment", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/usr/./bin/envoy"
		}, `policy.rules_by_container["sidecar"].executables[0]`, `".."`},
		{"dotdot segment", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/usr/bin/../sbin/envoy"
		}, `policy.rules_by_container["sidecar"].executables[0]`, "resolved path"},
		{"trailing dotdot", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/usr/bin/.."
		}, `policy.rules_by_container["sidecar"].executables[0]`, "resolved path"},
		{"path too long", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/" + strings.Repeat("a", 4095)
		}, `policy.rules_by_container["sidecar"].executables[0]`, "4095"},
		{"prefix too long", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/" + strings.Repeat("a", 251) + "/"
		}, `policy.rules_by_container["sidecar"].executables[0]`, "limited to 252 bytes"},
		{"root prefix", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/"
		}, `policy.rules_by_container["sidecar"].executables[0]`, "would allow every file"},
		{"dynamic loader", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/lib64/ld-linux-x86-64.so.2"
		}, `policy.rules_by_container["sidecar"].executables[0]`, "is a dynamic loader"},
		{"directory holding the loader", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables[0] = "/usr/lib/"
		}, `policy.rules_by_container["sidecar"].executables[0]`, "holds the dynamic loader"},
		{"too many executables", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables = many(1025, func(i int) string { return "/bin/x" + strings.Repeat("y", i%7) })
		}, `policy.rules_by_container["sidecar"].executables`, "at most 1024"},
		{"request id with space", func(r *agentv1.ApplyPodPolicyRequest) { r.RequestId = "a b" }, "request_id", "letters, digits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := validApply()
			tc.mutate(req)
			pp, err := validateApplyPodPolicy(req)
			if err == nil {
				t.Fatalf("accepted: %+v", pp)
			}
			if pp != nil {
				t.Errorf("returned a partial PodPolicy with the error")
			}
			requireViolation(t, err, tc.wantField, tc.wantText)
		})
	}
}

func TestValidateAcceptsEdges(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(r *agentv1.ApplyPodPolicyRequest)
	}{
		{"prefix of exactly 252 bytes", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables = []string{"/" + strings.Repeat("a", 250) + "/"}
		}},
		{"path of exactly 4095 bytes", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables = []string{"/" + strings.Repeat("a", 4094)}
		}},
		{"dots inside names", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables = []string{"/opt/app.d/..hidden", "/usr/bin/.x", "/a...b"}
		}},
		{"1024 executables", func(r *agentv1.ApplyPodPolicyRequest) {
			exes := make([]string, 1024)
			for i := range exes {
				exes[i] = "/bin/" + strings.Repeat("x", i+1)[:1+i%200] + "-" + string(rune('a'+i%26))
			}
			r.Policy.RulesByContainer["app"].Executables = exes
		}},
		{"empty allowlist (learn)", func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.Mode = agentv1.Mode_MODE_LEARN
			r.Policy.RulesByContainer = nil
		}},
		{"no request id", func(r *agentv1.ApplyPodPolicyRequest) { r.RequestId = "" }},
		{"non-uuid uid", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Uid = "static-pod-1" }},
		{"dotted pod name", func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Name = "kube-proxy.node-a" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := validApply()
			tc.mutate(req)
			if _, err := validateApplyPodPolicy(req); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestValidateReportsSeveralProblemsBounded(t *testing.T) {
	req := validApply()
	exes := make([]string, 50)
	for i := range exes {
		exes[i] = "relative"
	}
	req.Policy.RulesByContainer["app"].Executables = exes
	req.Pod.Uid = ""
	_, err := validateApplyPodPolicy(req)
	st := status.Convert(err)
	if !strings.Contains(st.Message(), "pod.uid") || !strings.Contains(st.Message(), "and 41 more") {
		t.Errorf("message = %q, want the first problems and a count of the rest", st.Message())
	}
	if got := len(badRequest(t, err).GetFieldViolations()); got != maxReportedViolations {
		t.Errorf("%d field violations in details, want %d", got, maxReportedViolations)
	}
}

func TestValidateOtherRequests(t *testing.T) {
	tests := []struct {
		name      string
		validate  func() error
		wantField string // "" means valid
	}{
		{"remove pod ok", func() error { return validateRemovePod(&agentv1.RemovePodRequest{PodUid: "abc-123"}) }, ""},
		{"remove pod no uid", func() error { return validateRemovePod(&agentv1.RemovePodRequest{}) }, "pod_uid"},
		{"remove policy ok", func() error {
			_, err := validateRemovePolicy(&agentv1.RemovePolicyRequest{Namespace: "shop", Name: "cart"})
			return err
		}, ""},
		{"remove policy bad uid guard", func() error {
			_, err := validateRemovePolicy(&agentv1.RemovePolicyRequest{Namespace: "shop", Name: "cart", PolicyUid: "X"})
			return err
		}, "policy_uid"},
		{"remove policy no name", func() error {
			_, err := validateRemovePolicy(&agentv1.RemovePolicyRequest{Namespace: "shop"})
			return err
		}, "name"},
		{"watch all", func() error { _, err := validateWatchEvents(&agentv1.WatchEventsRequest{}); return err }, ""},
		{"watch filter ok", func() error {
			_, err := validateWatchEvents(&agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{
				Namespace: "shop", Pod: "cart-1", Container: "app", Policy: "shop/cart",
				Actions: []agentv1.Action{agentv1.Action_ACTION_DENIED},
			}})
			return err
		}, ""},
		{"watch policy without slash", func() error {
			_, err := validateWatchEvents(&agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Policy: "cart"}})
			return err
		}, "filter.policy"},
		{"watch unknown action", func() error {
			_, err := validateWatchEvents(&agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Actions: []agentv1.Action{0}}})
			return err
		}, "filter.actions[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.validate()
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			requireViolation(t, err, tc.wantField, "")
		})
	}
}

// TestExecutablesFollowExecpath: the server refuses exactly the entries execpath refuses,
// and says so with execpath's words (one rule set for the CRD, this edge and the kernel).
func TestExecutablesFollowExecpath(t *testing.T) {
	for _, p := range []string{
		"/", "/bin/sh", "/usr/lib/app/", "/a/.b", "/a/b..", "bin/sh", "./sh", "/bin//sh", "//bin/sh",
		"/bin/./sh", "/bin/../sh", "/bin/.", "/..", "/bin/sh\x00", "/usr/lib/app//", "/usr/lib/app/./",
		"/bin/\xff", "/opt/日本/app", "/lib64/ld-linux-x86-64.so.2", "/usr/", "/usr/lib/", "",
	} {
		req := validApply()
		req.Policy.RulesByContainer["sidecar"].Executables = []string{p}
		_, err := validateApplyPodPolicy(req)
		problem := execpath.Problem(p)
		if (err == nil) != (problem == "") {
			t.Errorf("%q: server error %v, execpath problem %q", p, err, problem)
		}
		if err != nil && !strings.Contains(status.Convert(err).Message(), problem) {
			t.Errorf("%q: message %q lacks execpath's %q", p, status.Convert(err).Message(), problem)
		}
	}
}

func requireViolation(t *testing.T, err error, field, text string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("error = %v, want InvalidArgument", err)
	}
	if !strings.Contains(st.Message(), field+": ") {
		t.Errorf("message %q does not name field %q", st.Message(), field)
	}
	if text != "" && !strings.Contains(st.Message(), text) {
		t.Errorf("message %q does not say %q", st.Message(), text)
	}
	for _, fv := range badRequest(t, err).GetFieldViolations() {
		if fv.GetField() == field {
			return
		}
	}
	t.Errorf("BadRequest details lack field %q", field)
}

func badRequest(t *testing.T, err error) *errdetails.BadRequest {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return proto.CloneOf(br)
		}
	}
	t.Fatalf("no BadRequest detail in %v", err)
	return nil
}

// TestSubsetWholePolicyValidates: the controller now pushes the whole policy (issue 14,
// attack 4), so the "*" key must pass the agent's validation (it used to be refused as
// a container name, which is why the webhook expanded it per pod and sent a subset),
// and a digest that does not address the rules sent is refused: a cut or altered
// policy must not load as that version.
func TestSubsetWholePolicyValidates(t *testing.T) {
	withDigest := func(mutate func(r *agentv1.ApplyPodPolicyRequest)) *agentv1.ApplyPodPolicyRequest {
		r := validApply()
		r.Policy.RulesByContainer[podpolicy.AnyContainer] = &agentv1.Rules{Executables: []string{"/usr/bin/env"}}
		pp, err := validateApplyPodPolicy(r)
		if err != nil {
			t.Fatalf("whole policy with \"*\" refused: %v", err)
		}
		r.Policy.Digest = pp.Policy.Digest()
		if mutate != nil {
			mutate(r)
		}
		return r
	}
	tests := []struct {
		name   string
		req    *agentv1.ApplyPodPolicyRequest
		refuse bool
	}{
		{"whole policy, its digest", withDigest(nil), false},
		{"no digest", withDigest(func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Digest = "" }), false},
		{"keys in another order, paths repeated", withDigest(func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["sidecar"].Executables = []string{"/envoy", "/envoy"}
		}), false},
		{"a key dropped on the way", withDigest(func(r *agentv1.ApplyPodPolicyRequest) { delete(r.Policy.RulesByContainer, "sidecar") }), true},
		{"a path added on the way", withDigest(func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["*"].Executables = append(r.Policy.RulesByContainer["*"].Executables, "/tmp/evil")
		}), true},
		{"an empty list instead of a missing key", withDigest(func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["extra"] = &agentv1.Rules{}
		}), true},
		{"another mode", withDigest(func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Mode = agentv1.Mode_MODE_MONITOR }), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := proto.Clone(tc.req)
			pp, err := validateApplyPodPolicy(tc.req)
			if !proto.Equal(before, tc.req) {
				t.Fatal("validation modified the request")
			}
			if !tc.refuse {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got := pp.Policy.RulesByContainer[podpolicy.AnyContainer]; len(got) != 1 || got[0] != "/usr/bin/env" {
					t.Errorf("\"*\" rules = %v", got)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "policy.digest") || !strings.Contains(err.Error(), "cut or altered") {
				t.Fatalf("err = %v, want InvalidArgument naming policy.digest", err)
			}
		})
	}
}
