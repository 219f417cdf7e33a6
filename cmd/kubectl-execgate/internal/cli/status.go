package cli

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
)

func newStatusCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status [NODE...]",
		Short: "Show what execgate enforces on each node",
		Long: `Show, per node, how the exec hook is attached, how many pods and policies the
node enforces and the kernel memory they take, as the node's agent last reported
it in the node's ExecgateNode. The agent rewrites it within seconds of a pod or
policy change; counters are refreshed at most every --node-status-interval.

Nodes without an ExecgateNode are listed too: their agent is not running, or
cannot write it.`,
		Example: `  kubectl execgate status
  kubectl execgate status worker-1 -o yaml`,
		Args: cobra.ArbitraryArgs,
		RunE: runE(func(ctx context.Context, args []string) error { return o.status(ctx, args) }),
	}
}

func (o *options) status(ctx context.Context, names []string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	var list v1alpha1.ExecgateNodeList
	var missing []string
	if len(names) == 0 {
		if err := c.objects.List(ctx, &list); err != nil {
			return explainAPIError(err, "list ExecgateNodes")
		}
	}
	for _, name := range names {
		var n v1alpha1.ExecgateNode
		switch err := c.objects.Get(ctx, client.ObjectKey{Name: name}, &n); {
		case apierrors.IsNotFound(err):
			missing = append(missing, name)
		case err != nil:
			return explainAPIError(err, "get ExecgateNode "+name)
		default:
			list.Items = append(list.Items, n)
		}
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })

	var silent []string
	if len(names) == 0 {
		silent = nodesWithoutReport(ctx, c, list.Items)
	}
	if o.machineReadable() {
		if err := o.print(&list); err != nil {
			return err
		}
	} else if len(list.Items)+len(silent) == 0 && len(missing) == 0 {
		fmt.Fprintln(o.stderr, "No ExecgateNodes found: no execgate agent has reported yet.")
	} else if len(list.Items)+len(silent) > 0 {
		if err := o.statusTable(list.Items, silent); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no ExecgateNode for %s: the node does not exist, or its execgate agent has not reported (is it running? can it write execgatenodes?)", strings.Join(missing, ", "))
	}
	return nil
}

func (o *options) statusTable(items []v1alpha1.ExecgateNode, silent []string) error {
	t := newTable(o.stdout, "NODE", "ATTACH", "BPF-LSM", "PODS", "PENDING", "POLICIES", "KERNEL-MEMORY", "DROPPED", "KERNEL", "UPDATED")
	for _, n := range items {
		s := n.Status
		updated := "-"
		if s.LastUpdated != nil {
			updated = o.age(*s.LastUpdated) + " ago"
		}
		t.row(n.Name, string(s.AttachMode), yesNo(s.BPFLSMActive), itoa(s.PodsInForce), itoa(s.PodsPending),
			itoa(s.PolicyCount), bytesIEC(s.KernelMemoryBytes), strconv.FormatInt(s.EventsDropped, 10), s.Kernel, updated)
	}
	for _, name := range silent {
		t.row(name, "<no report>", "", "", "", "", "", "", "", "")
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(silent) > 0 {
		fmt.Fprintf(o.stderr, "%d node(s) have no ExecgateNode: their execgate agent is not running there, or cannot write execgatenodes.\n", len(silent))
	}
	return nil
}

// nodesWithoutReport lists the Nodes that have no ExecgateNode. It is best effort: a
// user who may not list nodes still gets the reports.
func nodesWithoutReport(ctx context.Context, c *clients, reported []v1alpha1.ExecgateNode) []string {
	var nodes corev1.NodeList
	if err := c.objects.List(ctx, &nodes); err != nil {
		return nil
	}
	seen := make(map[string]bool, len(reported))
	for _, n := range reported {
		seen[n.Name] = true
	}
	var silent []string
	for _, n := range nodes.Items {
		if !seen[n.Name] {
			silent = append(silent, n.Name)
		}
	}
	sort.Strings(silent)
	return silent
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func itoa[T ~int32 | ~int64 | ~int](n T) string { return strconv.FormatInt(int64(n), 10) }
