package helm_test

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestCapacityChartSizesMaps (issue 14.2): the chart sizes the agent's rule maps and
// gives each namespace a share of them (a value the schema bounds), and its PrometheusRule
// alerts on pods held deny-all, on refused loads and on filling maps.
func TestCapacityChartSizesMaps(t *testing.T) {
	out, err := render(t)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	for _, want := range []string{"--max-entries=32768", "--max-prefix-entries=4096", "--namespace-share-percent=25"} {
		if !strings.Contains(out, want) {
			t.Errorf("default agent arguments lack %s", want)
		}
	}
	if strings.Contains(out, "kind: PrometheusRule") {
		t.Error("a PrometheusRule is rendered while prometheusRule.enabled is false")
	}

	out, err = render(t, "--set", "agent.maxEntries=65536", "--set", "agent.maxPrefixEntries=512", "--set", "agent.namespaceSharePercent=100")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	for _, want := range []string{"--max-entries=65536", "--max-prefix-entries=512", "--namespace-share-percent=100"} {
		if !strings.Contains(out, want) {
			t.Errorf("agent arguments lack %s", want)
		}
	}

	// --set-json: --set passes a fraction as a string, which the schema would refuse anyway.
	for _, bad := range []string{"agent.namespaceSharePercent=0", "agent.namespaceSharePercent=101", "agent.maxPrefixEntries=0", "prometheusRule.mapFullRatio=2"} {
		if out, err := render(t, "--set-json", bad); err == nil {
			t.Errorf("chart rendered with %s", bad)
		} else if !strings.Contains(out, "values don't meet the specifications of the schema") {
			t.Errorf("%s refused, but not by the schema:\n%s", bad, out)
		}
	}

	out, err = render(t, "--set", "prometheusRule.enabled=true", "--set-json", "prometheusRule.mapFullRatio=0.8")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var rule struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	for _, doc := range strings.Split(out, "\n---\n") {
		if strings.Contains(doc, "kind: PrometheusRule") {
			if err := yaml.Unmarshal([]byte(doc), &rule); err != nil {
				t.Fatalf("decode the PrometheusRule: %v\n%s", err, doc)
			}
		}
	}
	if rule.Kind != "PrometheusRule" || len(rule.Spec.Groups) != 1 {
		t.Fatalf("no PrometheusRule with one group rendered:\n%s", out)
	}
	exprs := map[string]string{}
	for _, r := range rule.Spec.Groups[0].Rules {
		exprs[r.Alert] = r.Expr
	}
	for alert, metric := range map[string]string{
		"ExecgatePodsHeldFailClosed":   `execgate_agent_held_pods{result="fail_closed"}`,
		"ExecgatePodsHeldOlderVersion": `execgate_agent_held_pods{result="older_version"}`,
		"ExecgatePolicyLoadFailures":   "execgate_agent_policy_load_failures_total",
		"ExecgateRuleMapNearlyFull":    "execgate_agent_map_max_entries",
	} {
		if !strings.Contains(exprs[alert], metric) {
			t.Errorf("alert %s: expr %q, want one on %s", alert, exprs[alert], metric)
		}
	}
	if !strings.Contains(exprs["ExecgateRuleMapNearlyFull"], "> 0.8") {
		t.Errorf("ExecgateRuleMapNearlyFull does not use prometheusRule.mapFullRatio: %q", exprs["ExecgateRuleMapNearlyFull"])
	}
}
