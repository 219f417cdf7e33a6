package cli

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/execgate/execgate/api/v1alpha1"
)

// Reasons of the Kubernetes Events execgate writes on a pod for a violation. A burst of
// identical violations is one Event whose count grows.
const (
	// ReasonExecDenied: Protect mode denied an executable outside the allowlist.
	ReasonExecDenied = "ExecDenied"
	// ReasonExecViolation: Monitor mode let an executable outside the allowlist run, and
	// reported it.
	ReasonExecViolation = "ExecViolation"
)

// Actions, as --action takes them and the table prints them.
const (
	actionDenied   = "denied"
	actionReported = "reported"
)

var reasonOfAction = map[string]string{actionDenied: ReasonExecDenied, actionReported: ReasonExecViolation}

// policyAnnotation, on an Event, names the policy the violation broke. Without it the
// policy is the pod's execgate.io/policy label.
const policyAnnotation = v1alpha1.PolicyLabel

type eventsFlags struct {
	pod, policy, action  string
	allNamespaces, watch bool
}

func newEventsCommand(o *options) *cobra.Command {
	var f eventsFlags
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List, or stream, the violations execgate reported",
		Long: `List the violations execgate reported as Kubernetes Events on pods: executables
outside a policy's allowlist, denied in Protect mode (action "denied", reason
ExecDenied) or let run and reported in Monitor mode (action "reported", reason
ExecViolation). Identical violations in a burst are one event with a count.

Events live as long as the API server keeps them (one hour by default).`,
		Example: `  kubectl execgate events -n shop
  kubectl execgate events -A --action denied
  kubectl execgate events -n shop --pod web-7d9f --watch
  kubectl execgate events -n shop --policy web -o json`,
		Args: noArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if f.action != "" && reasonOfAction[f.action] == "" {
				return usagef("--action %q is not an action; use denied or reported", f.action)
			}
			if f.pod != "" {
				if msgs := validation.IsDNS1123Subdomain(f.pod); len(msgs) > 0 {
					return usagef("--pod %q is not a pod name: %s", f.pod, strings.Join(msgs, "; "))
				}
			}
			if f.policy != "" {
				if msgs := validation.IsValidLabelValue(f.policy); len(msgs) > 0 || strings.Contains(f.policy, "/") {
					return usagef("--policy %q is not a policy name (the name of a WorkloadPolicy in the namespace, at most 63 characters)", f.policy)
				}
			}
			return nil
		},
		RunE: runE(func(ctx context.Context, _ []string) error { return o.events(ctx, f) }),
	}
	cmd.Flags().StringVar(&f.pod, "pod", "", "only the violations of this pod")
	cmd.Flags().StringVar(&f.policy, "policy", "", "only the violations of pods under this WorkloadPolicy")
	cmd.Flags().StringVar(&f.action, "action", "", "only this action: denied (Protect) or reported (Monitor)")
	cmd.Flags().BoolVarP(&f.allNamespaces, "all-namespaces", "A", false, "violations in every namespace")
	cmd.Flags().BoolVarP(&f.watch, "watch", "w", false, "after listing, stream new violations until interrupted")
	return cmd
}

// violation is one Event with what the table shows of it.
type violation struct {
	event  *corev1.Event
	action string
	policy string
	count  int32
	last   time.Time
}

func (o *options) events(ctx context.Context, f eventsFlags) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	ns := c.namespace
	if f.allNamespaces {
		ns = metav1.NamespaceAll
	}
	reasons := []string{ReasonExecDenied, ReasonExecViolation}
	if f.action != "" {
		reasons = []string{reasonOfAction[f.action]}
	}
	policies := policyResolver{c: c, labels: map[string]string{}}
	keep := func(ctx context.Context, e *corev1.Event) (*violation, bool) {
		v := newViolation(e)
		if f.policy != "" || !o.machineReadable() {
			v.policy = policies.of(ctx, e)
		}
		return v, f.policy == "" || v.policy == f.policy
	}

	var (
		found   []*violation
		listRVs = map[string]string{}
	)
	for _, reason := range reasons {
		list, err := c.kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: eventSelector(reason, f.pod)})
		if err != nil {
			return fmt.Errorf("list %s events: %w", reason, err)
		}
		listRVs[reason] = list.ResourceVersion
		for i := range list.Items {
			if v, ok := keep(ctx, &list.Items[i]); ok {
				found = append(found, v)
			}
		}
	}
	sort.Slice(found, func(i, j int) bool {
		a, b := found[i], found[j]
		if !a.last.Equal(b.last) {
			return a.last.Before(b.last)
		}
		return a.event.Namespace+"/"+a.event.Name < b.event.Namespace+"/"+b.event.Name
	})

	out := violationPrinter{o: o, allNamespaces: f.allNamespaces}
	if err := out.list(found); err != nil {
		return err
	}
	if len(found) == 0 && !f.watch && !o.machineReadable() {
		fmt.Fprintln(o.stderr, "No violations found.")
	}
	if !f.watch {
		return nil
	}
	return o.watchEvents(ctx, c, ns, f.pod, listRVs, keep, &out)
}

// watchEvents streams the Events of each reason from where its list ended, until ctx
// ends (Ctrl-C).
func (o *options) watchEvents(ctx context.Context, c *clients, ns, pod string, from map[string]string,
	keep func(context.Context, *corev1.Event) (*violation, bool), out *violationPrinter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	merged := make(chan watch.Event)
	errs := make(chan error, len(from))
	for reason, rv := range from {
		selector := eventSelector(reason, pod)
		lw := &cache.ListWatch{WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = selector
			return c.kube.CoreV1().Events(ns).Watch(ctx, opts)
		}}
		w, err := watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
		if err != nil {
			return fmt.Errorf("watch %s events: %w", reason, err)
		}
		go func() { // ends when ctx ends: the watcher stops and closes its channel
			defer w.Stop()
			for ev := range w.ResultChan() {
				select {
				case merged <- ev:
				case <-ctx.Done():
					return
				}
			}
			errs <- fmt.Errorf("watch of %s events ended", reason)
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case ev := <-merged:
			switch ev.Type {
			case watch.Added, watch.Modified:
				e, ok := ev.Object.(*corev1.Event)
				if !ok {
					continue
				}
				if v, ok := keep(ctx, e); ok {
					if err := out.one(v); err != nil {
						return err
					}
				}
			case watch.Error:
				return fmt.Errorf("watch events: %w (run the command again)", apierrors.FromObject(ev.Object))
			}
		}
	}
}

func eventSelector(reason, pod string) string {
	set := fields.Set{"reason": reason, "involvedObject.kind": "Pod"}
	if pod != "" {
		set["involvedObject.name"] = pod
	}
	return fields.SelectorFromSet(set).String()
}

func newViolation(e *corev1.Event) *violation {
	v := &violation{event: e, action: actionReported, count: max(e.Count, 1), last: e.LastTimestamp.Time}
	if e.Reason == ReasonExecDenied {
		v.action = actionDenied
	}
	if e.Series != nil {
		v.count = max(v.count, e.Series.Count)
		if t := e.Series.LastObservedTime.Time; t.After(v.last) {
			v.last = t
		}
	}
	for _, t := range []time.Time{e.EventTime.Time, e.FirstTimestamp.Time, e.CreationTimestamp.Time} {
		if v.last.IsZero() {
			v.last = t
		}
	}
	return v
}

// policyResolver finds the policy of a violation: the Event's annotation, else the pod's
// label (each pod read once; "" when the pod is gone).
type policyResolver struct {
	c      *clients
	labels map[string]string // namespace/pod -> policy label
}

func (r *policyResolver) of(ctx context.Context, e *corev1.Event) string {
	if p := e.Annotations[policyAnnotation]; p != "" {
		if _, name, ok := strings.Cut(p, "/"); ok {
			return name
		}
		return p
	}
	key := e.InvolvedObject.Namespace + "/" + e.InvolvedObject.Name
	if p, ok := r.labels[key]; ok {
		return p
	}
	pod, err := r.c.kube.CoreV1().Pods(e.InvolvedObject.Namespace).Get(ctx, e.InvolvedObject.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		r.labels[key] = ""
		return ""
	case err != nil:
		return "" // unknown for now; asked again for the pod's next event
	}
	r.labels[key] = pod.Labels[v1alpha1.PolicyLabel]
	return r.labels[key]
}

// violationPrinter prints violations as a table, or as Event objects for -o.
type violationPrinter struct {
	o             *options
	allNamespaces bool
	table         *table
}

func (p *violationPrinter) headers() []string {
	h := []string{"LAST SEEN", "POD", "ACTION", "COUNT", "POLICY", "MESSAGE"}
	if p.allNamespaces {
		h = slices.Insert(h, 1, "NAMESPACE")
	}
	return h
}

func (p *violationPrinter) list(vs []*violation) error {
	if p.o.machineReadable() {
		list := &corev1.EventList{}
		for _, v := range vs {
			list.Items = append(list.Items, *v.event)
		}
		if list.Items == nil {
			list.Items = []corev1.Event{}
		}
		return p.o.print(list)
	}
	if len(vs) == 0 {
		return nil
	}
	for _, v := range vs {
		p.row(v)
	}
	return p.table.flush()
}

func (p *violationPrinter) one(v *violation) error {
	if p.o.machineReadable() {
		return p.o.printStreamed(v.event)
	}
	p.row(v)
	return p.table.flush()
}

func (p *violationPrinter) row(v *violation) {
	if p.table == nil {
		p.table = newTable(p.o.stdout, p.headers()...)
	}
	cells := []string{p.o.age(metav1.NewTime(v.last)), v.event.InvolvedObject.Name, v.action, itoa(v.count), v.policy, v.event.Message}
	if p.allNamespaces {
		cells = slices.Insert(cells, 1, v.event.InvolvedObject.Namespace)
	}
	p.table.row(cells...)
}
