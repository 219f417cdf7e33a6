package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/promote"
)

type promoteFlags struct {
	mode, policyName string
}

func newPromoteCommand(o *options) *cobra.Command {
	var f promoteFlags
	cmd := &cobra.Command{
		Use:   "promote PROPOSAL --mode monitor|protect [--policy-name NAME]",
		Short: "Turn a proposal into a WorkloadPolicy in Monitor or Protect mode",
		Long: `Turn a WorkloadPolicyProposal into a WorkloadPolicy with the proposal's
executables per container, in mode Monitor (violations are reported) or Protect
(they are denied and reported).

The policy is named --policy-name, by default the policy the workload's pods
already opt into (their execgate.io/policy label, usually the Learn-mode policy,
which is then switched to the new mode) or else the proposal's name. An existing
policy is updated only if it is in Learn mode or was promoted from this proposal;
its rules are replaced by the proposal's.`,
		Example: `  kubectl execgate promote deployment-web -n shop --mode monitor
  kubectl execgate promote deployment-web -n shop --mode protect --policy-name web`,
		Args: exactArg("proposal name"),
		PreRunE: func(*cobra.Command, []string) error {
			if _, err := parsePromoteMode(f.mode); err != nil {
				return err
			}
			if f.policyName != "" {
				if problems := promote.PolicyNameProblems(f.policyName); len(problems) > 0 {
					return usagef("--policy-name %q %s", f.policyName, strings.Join(problems, "; "))
				}
			}
			return nil
		},
		RunE: runE(func(ctx context.Context, args []string) error {
			mode, _ := parsePromoteMode(f.mode)
			return o.promote(ctx, args[0], mode, f.policyName)
		}),
	}
	cmd.Flags().StringVar(&f.mode, "mode", "", "mode of the policy: monitor or protect (required)")
	cmd.Flags().StringVar(&f.policyName, "policy-name", "", "name of the WorkloadPolicy (default: the policy the workload's pods opt into, else the proposal's name)")
	return cmd
}

func parsePromoteMode(s string) (v1alpha1.Mode, error) {
	switch strings.ToLower(s) {
	case "monitor":
		return v1alpha1.ModeMonitor, nil
	case "protect":
		return v1alpha1.ModeProtect, nil
	case "":
		return "", usagef("--mode is required: monitor (report violations) or protect (deny them)")
	case "learn":
		return "", usagef("--mode learn: a proposal is what Learn mode produced; promote it to monitor or protect")
	}
	return "", usagef("--mode %q is not a mode; use monitor or protect", s)
}

func (o *options) promote(ctx context.Context, proposalName string, mode v1alpha1.Mode, policyName string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	res, err := promote.Promote(ctx, c.objects, c.namespace, proposalName, mode, policyName)
	if meta.IsNoMatchError(err) {
		return explainAPIError(err, "promote")
	}
	if err != nil {
		return err
	}
	if o.machineReadable() {
		return o.print(res.Policy)
	}
	pol, w := res.Policy, res.Proposal.Spec.Workload
	verb := "created"
	if !res.Created {
		verb = fmt.Sprintf("updated (was %s)", res.PreviousMode)
	}
	fmt.Fprintf(o.stdout, "WorkloadPolicy %s/%s %s from proposal %s: mode %s, %d container(s), %d executable(s).\n",
		pol.Namespace, pol.Name, verb, res.Proposal.Name, pol.Spec.Mode, len(pol.Spec.RulesByContainer), countExecutables(pol.Spec.RulesByContainer))
	if res.PodsOptedIn {
		fmt.Fprintf(o.stdout, "The pods of %s %s opt into it already (label %s=%s): their nodes switch to the new rules within seconds.\n",
			w.Kind, w.Name, v1alpha1.PolicyLabel, pol.Name)
	} else {
		fmt.Fprintf(o.stdout, "Pods opt in with the label %s=%s. %s\n", v1alpha1.PolicyLabel, pol.Name, optInHint(w, pol))
	}
	return nil
}

// optInHint is the command that labels the workload's pods.
func optInHint(w v1alpha1.WorkloadReference, pol *v1alpha1.WorkloadPolicy) string {
	path, ok := promote.PodLabelsPath(w.Kind)
	if !ok {
		return ""
	}
	if w.Kind == "Pod" {
		return fmt.Sprintf("Label the pod (its replacement needs the label too):\n  kubectl -n %s label pod %s %s=%s --overwrite",
			pol.Namespace, w.Name, v1alpha1.PolicyLabel, pol.Name)
	}
	patch := fmt.Sprintf(`{%q:%q}`, v1alpha1.PolicyLabel, pol.Name)
	for i := len(path) - 1; i >= 0; i-- {
		patch = fmt.Sprintf(`{%q:%s}`, path[i], patch)
	}
	return fmt.Sprintf("Set it on the %s's pod template (this rolls the pods out):\n  kubectl -n %s patch %s %s --type merge -p '%s'",
		w.Kind, pol.Namespace, strings.ToLower(w.Kind), w.Name, patch)
}
