package cli

import (
	"context"
	"fmt"
	"sort"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
)

func newProposalsCommand(o *options) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:     "proposals [PROPOSAL]",
		Aliases: []string{"proposal"},
		Short:   "List the allowlists Learn mode recorded, or show one",
		Long: `List the WorkloadPolicyProposals Learn mode recorded, one per workload; with a
name, show the executables it recorded per container. Review a proposal, then
turn it into a policy with 'kubectl execgate promote'.`,
		Example: `  kubectl execgate proposals -A
  kubectl execgate proposals deployment-web -n shop`,
		Args: maxArgs(1, "proposal name"),
		PreRunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 1 && allNamespaces {
				return usagef("a proposal name and --all-namespaces exclude each other; give -n NAMESPACE instead")
			}
			return nil
		},
		RunE: runE(func(ctx context.Context, args []string) error {
			if len(args) == 1 {
				return o.showProposal(ctx, args[0])
			}
			return o.listProposals(ctx, allNamespaces)
		}),
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "proposals in every namespace")
	return cmd
}

func (o *options) listProposals(ctx context.Context, allNamespaces bool) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	var opts []client.ListOption
	if !allNamespaces {
		opts = append(opts, client.InNamespace(c.namespace))
	}
	var list v1alpha1.WorkloadPolicyProposalList
	if err := c.objects.List(ctx, &list, opts...); err != nil {
		return explainAPIError(err, "list WorkloadPolicyProposals")
	}
	sort.Slice(list.Items, func(i, j int) bool {
		a, b := list.Items[i], list.Items[j]
		return a.Namespace < b.Namespace || (a.Namespace == b.Namespace && a.Name < b.Name)
	})
	if o.machineReadable() {
		return o.print(&list)
	}
	if len(list.Items) == 0 {
		if allNamespaces {
			fmt.Fprintln(o.stderr, "No proposals found.")
		} else {
			fmt.Fprintf(o.stderr, "No proposals found in namespace %s.\n", c.namespace)
		}
		return nil
	}
	headers := []string{"NAME", "WORKLOAD", "CONTAINERS", "EXECUTABLES", "PODS", "UPDATED", "AGE"}
	if allNamespaces {
		headers = append([]string{"NAMESPACE"}, headers...)
	}
	t := newTable(o.stdout, headers...)
	for _, p := range list.Items {
		cells := []string{p.Name, p.Spec.Workload.Kind + "/" + p.Spec.Workload.Name, itoa(len(p.Spec.RulesByContainer)),
			itoa(countExecutables(p.Spec.RulesByContainer)), itoa(p.Status.ObservedPods), o.agePtr(p.Status.LastUpdated), o.age(p.CreationTimestamp)}
		if allNamespaces {
			cells = append([]string{p.Namespace}, cells...)
		}
		t.row(cells...)
	}
	return t.flush()
}

func (o *options) showProposal(ctx context.Context, name string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	var p v1alpha1.WorkloadPolicyProposal
	if err := c.objects.Get(ctx, client.ObjectKey{Namespace: c.namespace, Name: name}, &p); err != nil {
		return explainAPIError(err, fmt.Sprintf("get WorkloadPolicyProposal %s/%s", c.namespace, name))
	}
	if o.machineReadable() {
		return o.print(&p)
	}
	w := o.stdout
	fmt.Fprintf(w, "Proposal:     %s/%s\n", p.Namespace, p.Name)
	fmt.Fprintf(w, "Workload:     %s %s\n", p.Spec.Workload.Kind, p.Spec.Workload.Name)
	changed := "unknown"
	if p.Status.LastUpdated != nil {
		changed = o.age(*p.Status.LastUpdated) + " ago"
	}
	fmt.Fprintf(w, "Observed:     %d pod(s), %d executable(s), last change %s\n", p.Status.ObservedPods,
		countExecutables(p.Spec.RulesByContainer), changed)
	if len(p.Spec.RulesByContainer) == 0 {
		fmt.Fprintln(w, "Executables:  none recorded yet")
	} else {
		fmt.Fprintln(w, "Executables:")
		t := newTable(w, "  CONTAINER", "EXECUTABLE")
		for _, container := range sortedContainers(p.Spec.RulesByContainer) {
			for _, exe := range p.Spec.RulesByContainer[container].Executables {
				t.row("  "+container, exe)
			}
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nPromote it:   kubectl execgate promote %s -n %s --mode monitor\n", p.Name, p.Namespace)
	return nil
}

func (o *options) agePtr(t *metav1.Time) string {
	if t == nil {
		return "-"
	}
	return o.age(*t)
}

func countExecutables(r v1alpha1.RulesByContainer) int {
	n := 0
	for _, c := range r {
		n += len(c.Executables)
	}
	return n
}

func sortedContainers(r v1alpha1.RulesByContainer) []string {
	names := make([]string, 0, len(r))
	for name := range r {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
