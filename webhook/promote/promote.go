// Package promote turns a WorkloadPolicyProposal (what Learn mode recorded) into a
// WorkloadPolicy in Monitor or Protect mode: the one-command step between learning and
// enforcing. The kubectl plugin and the controller's tests use it.
//
// It owns Promote (and PromoteProposal, which returns only the policy): which policy a
// promotion writes by default, when it may overwrite an existing one, and what it
// annotates. It must not import the controller (package webhook), the node agent or
// anything that talks to agents: its only dependencies are the API types and a
// controller-runtime client, so a command-line tool can import it cheaply. It never
// changes pods or workloads: pods opt into a policy by the label
// execgate.io/policy=<policy name>, which the user sets on the workload's pod template
// (PodLabelsPath says where; see docs/learn-monitor-protect.md).
package promote

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
)

// Annotations PromoteProposal sets on the policy, so that a reader can tell where the
// rules came from.
const (
	// AnnotationProposal is the name of the proposal the rules were promoted from.
	AnnotationProposal = "execgate.io/promoted-from"
	// AnnotationWorkload is that proposal's workload, as "<Kind>/<name>".
	AnnotationWorkload = "execgate.io/promoted-workload"
)

// ErrInvalidArgument matches (errors.Is) every error that is the caller's to fix (a
// mode, a name, a proposal that cannot be promoted yet, a policy written by someone
// else), as opposed to API errors. Such an error's message is complete without it.
var ErrInvalidArgument = errors.New("invalid argument")

// invalidArgument is an error that is ErrInvalidArgument without saying so.
type invalidArgument struct{ error }

func (e invalidArgument) Unwrap() error        { return e.error }
func (e invalidArgument) Is(target error) bool { return target == ErrInvalidArgument }

func invalidf(format string, args ...any) error { return invalidArgument{fmt.Errorf(format, args...)} }

// Result is what Promote wrote.
type Result struct {
	Policy *v1alpha1.WorkloadPolicy
	// Proposal is the proposal the rules came from.
	Proposal *v1alpha1.WorkloadPolicyProposal
	// Created is false when an existing policy was updated.
	Created bool
	// PreviousMode is the updated policy's mode before the promotion ("" if Created).
	PreviousMode v1alpha1.Mode
	// PodsOptedIn is true when the pod template of the proposal's workload carries the
	// label execgate.io/policy=<Policy.Name>: its pods switch to the new rules without a
	// restart. False when they carry another policy or none, or the workload could not
	// be read.
	PodsOptedIn bool
}

// PromoteProposal creates, or updates, the WorkloadPolicy policyName in namespace with
// the rules of the proposal proposalName and the given mode, and returns the policy as
// written. See Promote.
func PromoteProposal(ctx context.Context, c client.Client, namespace, proposalName string, mode v1alpha1.Mode, policyName string) (*v1alpha1.WorkloadPolicy, error) {
	res, err := Promote(ctx, c, namespace, proposalName, mode, policyName)
	return res.Policy, err
}

// Promote creates, or updates, the WorkloadPolicy policyName in namespace with the rules
// of the proposal proposalName and the given mode.
//
// policyName "" means the policy the workload's pods already opt into (the label
// execgate.io/policy on its pod template, read with c), or else the proposal's name. That
// is the usual path: promoting into the Learn policy the pods carry switches their mode
// without a restart. Pods that do not carry the label execgate.io/policy=<policy> are not
// affected until they do.
//
// mode must be Monitor or Protect. An existing policy is updated only if it is in Learn
// mode or was promoted from this proposal before (annotation AnnotationProposal); any
// other policy was written by someone else and is left alone. The update replaces its
// mode and all of its rules and keeps its labels and other annotations.
func Promote(ctx context.Context, c client.Client, namespace, proposalName string, mode v1alpha1.Mode, policyName string) (Result, error) {
	switch mode {
	case v1alpha1.ModeMonitor, v1alpha1.ModeProtect:
	case v1alpha1.ModeLearn:
		return Result{}, invalidf("mode Learn: a proposal is what Learn recorded; promote it to Monitor (report what is not listed) or Protect (deny it)")
	default:
		return Result{}, invalidf("mode %q: want Monitor or Protect", mode)
	}
	if err := validateNames(namespace, proposalName, policyName); err != nil {
		return Result{}, err
	}

	var proposal v1alpha1.WorkloadPolicyProposal
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: proposalName}, &proposal); err != nil {
		if apierrors.IsNotFound(err) {
			return Result{}, invalidf("proposal %s/%s not found (list them with: kubectl get workloadpolicyproposals -n %s)", namespace, proposalName, namespace)
		}
		return Result{}, fmt.Errorf("get proposal %s/%s: %w", namespace, proposalName, err)
	}
	podsPolicy := workloadPodsPolicy(ctx, c, namespace, proposal.Spec.Workload)
	if policyName == "" {
		from := "the label " + v1alpha1.PolicyLabel + " of " + proposal.Spec.Workload.Kind + " " + proposal.Spec.Workload.Name + "'s pods"
		if policyName = podsPolicy; policyName == "" {
			policyName, from = proposalName, "the proposal's name"
		}
		if problems := PolicyNameProblems(policyName); len(problems) > 0 {
			return Result{}, invalidf("policy name %q, from %s, %s; give a policy name", policyName, from, strings.Join(problems, "; "))
		}
	}
	spec := proposal.PolicySpec(mode)
	probe := v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: policyName}, Spec: spec}
	if err := probe.Validate(); err != nil {
		return Result{}, invalidf("proposal %s/%s cannot become a %s policy yet (let the workload run longer in Learn mode, or edit the proposal):\n%w", namespace, proposalName, mode, err)
	}
	annotations := map[string]string{
		AnnotationProposal: proposalName,
		AnnotationWorkload: proposal.Spec.Workload.Kind + "/" + proposal.Spec.Workload.Name,
	}

	res := Result{Proposal: &proposal, PodsOptedIn: podsPolicy == policyName}
	err := retry.OnError(retry.DefaultRetry, func(err error) bool {
		return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)
	}, func() error {
		var policy v1alpha1.WorkloadPolicy
		err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: policyName}, &policy)
		switch {
		case apierrors.IsNotFound(err):
			policy = v1alpha1.WorkloadPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: policyName, Annotations: annotations},
				Spec:       *spec.DeepCopy(),
			}
			if err := c.Create(ctx, &policy); err != nil {
				return fmt.Errorf("create policy %s/%s: %w", namespace, policyName, err)
			}
			res.Policy, res.Created, res.PreviousMode = &policy, true, ""
			return nil
		case err != nil:
			return fmt.Errorf("get policy %s/%s: %w", namespace, policyName, err)
		case policy.Spec.Mode != v1alpha1.ModeLearn && policy.Annotations[AnnotationProposal] != proposalName:
			return invalidf("policy %s/%s exists in mode %s and was not promoted from proposal %s; promote under another policy name, or edit that policy",
				namespace, policyName, policy.Spec.Mode, proposalName)
		}
		previous := policy.Spec.Mode
		policy.Spec = *spec.DeepCopy()
		if policy.Annotations == nil {
			policy.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			policy.Annotations[k] = v
		}
		if err := c.Update(ctx, &policy); err != nil {
			return fmt.Errorf("update policy %s/%s: %w", namespace, policyName, err)
		}
		res.Policy, res.Created, res.PreviousMode = &policy, false, previous
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// podLabelsPaths is where each workload kind a proposal can record keeps the labels of
// the pods it creates.
var podLabelsPaths = map[string][]string{
	"Deployment":  {"spec", "template", "metadata", "labels"},
	"StatefulSet": {"spec", "template", "metadata", "labels"},
	"DaemonSet":   {"spec", "template", "metadata", "labels"},
	"Job":         {"spec", "template", "metadata", "labels"},
	"CronJob":     {"spec", "jobTemplate", "spec", "template", "metadata", "labels"},
	"Pod":         {"metadata", "labels"},
}

// PodLabelsPath returns the fields of a workload of kind that hold the labels of its pods
// (for a Pod, its own labels); ok is false for a kind Learn does not record.
func PodLabelsPath(kind string) (fields []string, ok bool) {
	fields, ok = podLabelsPaths[kind]
	return fields, ok
}

// workloadPodsPolicy returns the policy the workload's pods opt into: "" when they opt
// into none, or the workload cannot be read (gone, or not readable with c).
func workloadPodsPolicy(ctx context.Context, c client.Reader, namespace string, w v1alpha1.WorkloadReference) string {
	path, ok := PodLabelsPath(w.Kind)
	if !ok {
		return ""
	}
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(w.APIVersion)
	u.SetKind(w.Kind)
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: w.Name}, u); err != nil {
		return ""
	}
	labels, _, _ := unstructured.NestedStringMap(u.Object, path...)
	return labels[v1alpha1.PolicyLabel]
}

// PolicyNameProblems says why name cannot name a policy: it is an object name that pods
// carry as a label value. Each problem reads after the name ("is not a valid object
// name: ..."); none means name is fine.
func PolicyNameProblems(name string) []string {
	var problems []string
	if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
		problems = append(problems, "is not a valid object name: "+strings.Join(msgs, "; "))
	}
	if len(name) > validation.LabelValueMaxLength {
		problems = append(problems, fmt.Sprintf("is %d characters long; pods name it in the label %s, whose values are limited to %d",
			len(name), v1alpha1.PolicyLabel, validation.LabelValueMaxLength))
	}
	return problems
}

// validateNames checks the names a caller gave; policy "" is checked once it is chosen.
func validateNames(namespace, proposal, policy string) error {
	var problems []string
	for _, msg := range validation.IsDNS1123Label(namespace) {
		problems = append(problems, fmt.Sprintf("namespace %q: %s", namespace, msg))
	}
	for _, msg := range validation.IsDNS1123Subdomain(proposal) {
		problems = append(problems, fmt.Sprintf("proposal name %q: %s", proposal, msg))
	}
	if policy != "" {
		for _, msg := range PolicyNameProblems(policy) {
			problems = append(problems, fmt.Sprintf("policy name %q %s", policy, msg))
		}
	}
	if len(problems) > 0 {
		return invalidf("%s", strings.Join(problems, "; "))
	}
	return nil
}
