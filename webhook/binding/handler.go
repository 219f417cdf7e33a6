package binding

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/agents"
)

// Webhook paths; deploy/helm/execgate (values webhook.paths) must match.
const (
	BindingPath = "/validate-pods-binding"
	PodsPath    = "/validate-pods"
)

// Event reasons recorded on pods.
const (
	ReasonPolicyNotFound = "PolicyNotFound"
	ReasonPolicyInvalid  = "PolicyInvalid"
	// ReasonWritableRootFilesystem: a Protect pod has a container whose root filesystem is
	// writable, where an allowed path can be overwritten with another program (issue 14.9).
	ReasonWritableRootFilesystem = "WritableRootFilesystem"
	// ReasonPolicyCapacityExceeded: the pod's policy does not fit in its node's rule maps
	// or its namespace's share of them (issue 14.2); the agent holds the pod (Protect:
	// deny-all) until it fits.
	ReasonPolicyCapacityExceeded = "PolicyCapacityExceeded"
)

// DefaultLookupTimeout bounds the API read made when the informer cache does not have the
// pod yet (a binding often arrives milliseconds after the pod's creation).
const DefaultLookupTimeout = 250 * time.Millisecond

// Admitter holds what both admission handlers need. Every field but Recorder and Log is
// required.
type Admitter struct {
	// Cache is the informer-backed reader (pods, WorkloadPolicies).
	Cache client.Reader
	// APIReader reads from the API server; used only when Cache misses the pod.
	APIReader     client.Reader
	LookupTimeout time.Duration
	// AnswerWithin bounds one whole decision: the pod lookup, the connection and mTLS
	// handshake to the agent when none is open yet, and the push. The API server gives up
	// on the webhook after its timeoutSeconds, and then the pod is bound without a push
	// whatever the webhook does next; the chart sets this to timeoutSeconds minus the
	// API server's own share of the call (webhook.callOverhead). 0: no bound beyond the
	// lookup and push timeouts.
	AnswerWithin time.Duration
	Pusher       *agents.Pusher
	Recorder     events.EventRecorder
	Log          *zap.Logger
}

// admissionTarget is a decoded, validated request: which pod goes to which node.
type admissionTarget struct {
	namespace, name string
	uid             types.UID   // from the Binding, when it carries one
	node            string      // the node the pod is bound to
	pod             *corev1.Pod // set when the request carries the pod itself
	requestID       string
	dryRun          bool
}

// decision is what the handler answers. The request is always allowed.
type decision struct {
	outcome  agents.Outcome
	message  string
	warnings []string
}

// BindingHandler serves /validate-pods-binding (pods/binding CREATE): the request carries
// only the Binding, so the pod is looked up. It never denies.
type BindingHandler struct{ *Admitter }

// PodHandler serves /validate-pods (pods CREATE with spec.nodeName already set, which
// skip the binding). It never denies.
type PodHandler struct{ *Admitter }

// Handle implements admission.Handler.
func (h *BindingHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	defer func() { webhookDuration.WithLabelValues("binding").Observe(time.Since(start).Seconds()) }()
	target, err := decodeBinding(req)
	if err != nil {
		return h.respond(req, decision{outcome: OutcomeInvalidRequest, message: "request not understood; allowed without a push", warnings: []string{"execgate: " + err.Error()}})
	}
	return h.respond(req, h.decide(ctx, target))
}

// Handle implements admission.Handler.
func (h *PodHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	defer func() { webhookDuration.WithLabelValues("pods").Observe(time.Since(start).Seconds()) }()
	target, err := decodePod(req)
	if err != nil {
		return h.respond(req, decision{outcome: OutcomeInvalidRequest, message: "request not understood; allowed without a push", warnings: []string{"execgate: " + err.Error()}})
	}
	if target.node == "" {
		return h.respond(req, decision{outcome: OutcomeUnscheduled, message: "pod has no spec.nodeName yet; its policy is pushed at binding"})
	}
	return h.respond(req, h.decide(ctx, target))
}

var bindingKind = "Binding"

// decodeBinding validates a pods/binding request. Fail open means the answer is "allowed"
// whatever happens here; the error only becomes a warning and a metric.
func decodeBinding(req admission.Request) (admissionTarget, error) {
	if err := checkRequest(req, bindingKind); err != nil {
		return admissionTarget{}, err
	}
	var b corev1.Binding
	if err := json.Unmarshal(req.Object.Raw, &b); err != nil {
		return admissionTarget{}, fmt.Errorf("object is not a JSON Binding: %w", err)
	}
	if b.Kind != "" && b.Kind != bindingKind {
		return admissionTarget{}, fmt.Errorf("object kind is %q, want Binding", b.Kind)
	}
	t := admissionTarget{
		namespace: first(req.Namespace, b.Namespace),
		name:      first(req.Name, b.Name),
		uid:       b.UID,
		node:      b.Target.Name,
		requestID: string(req.UID),
		dryRun:    req.DryRun != nil && *req.DryRun,
	}
	if b.Target.Kind != "" && b.Target.Kind != "Node" {
		return t, fmt.Errorf("binding target kind is %q; only Node is supported", b.Target.Kind)
	}
	return t, checkNames(t, true)
}

func decodePod(req admission.Request) (admissionTarget, error) {
	if err := checkRequest(req, "Pod"); err != nil {
		return admissionTarget{}, err
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		return admissionTarget{}, fmt.Errorf("object is not a JSON Pod: %w", err)
	}
	if pod.Kind != "" && pod.Kind != "Pod" {
		return admissionTarget{}, fmt.Errorf("object kind is %q, want Pod", pod.Kind)
	}
	pod.Namespace = first(req.Namespace, pod.Namespace)
	pod.Name = first(pod.Name, req.Name)
	t := admissionTarget{
		namespace: pod.Namespace, name: pod.Name, uid: pod.UID, node: pod.Spec.NodeName, pod: pod,
		requestID: string(req.UID), dryRun: req.DryRun != nil && *req.DryRun,
	}
	return t, checkNames(t, false)
}

func checkRequest(req admission.Request, kind string) error {
	if req.Operation != admissionv1.Create {
		return fmt.Errorf("operation is %q; this webhook handles CREATE only", req.Operation)
	}
	if req.Kind.Kind != kind || req.Kind.Group != "" {
		return fmt.Errorf("request kind is %q (group %q); this webhook handles core/v1 %s", req.Kind.Kind, req.Kind.Group, kind)
	}
	if len(req.Object.Raw) == 0 {
		return errors.New("request has no object")
	}
	return nil
}

// checkNames validates the names the request supplies; the node may be empty only for a
// pod (it then waits for its binding).
func checkNames(t admissionTarget, requireNode bool) error {
	var problems []string
	for _, c := range []struct{ field, value string }{{"namespace", t.namespace}, {"name", t.name}, {"node", t.node}} {
		if c.field == "node" && c.value == "" && !requireNode {
			continue
		}
		var msgs []string
		if c.field == "namespace" {
			msgs = validation.IsDNS1123Label(c.value)
		} else {
			msgs = validation.IsDNS1123Subdomain(c.value)
		}
		if len(msgs) > 0 {
			problems = append(problems, fmt.Sprintf("%s %q: %s", c.field, c.value, strings.Join(msgs, "; ")))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, ", "))
	}
	return nil
}

// decide finds the pod's policy and pushes it to the node's agent, within AnswerWithin.
func (a *Admitter) decide(ctx context.Context, t admissionTarget) decision {
	if a.AnswerWithin > 0 {
		// The lookup and the push keep their own timeouts, cut short by this one: their
		// sum may exceed what the API server waits for.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.AnswerWithin)
		defer cancel()
	}
	log := a.logger().With(zap.String("namespace", t.namespace), zap.String("pod", t.name), zap.String("node", t.node), zap.String("requestID", t.requestID))
	pod := t.pod
	if pod == nil {
		var err error
		if pod, err = a.lookupPod(ctx, t); err != nil {
			log.Warn("pod lookup failed; allowing the binding without a push", zap.Error(err))
			return decision{outcome: agents.OutcomeError, message: "pod not found", warnings: []string{"execgate: " + err.Error()}}
		}
	}
	policyName := pod.Labels[v1alpha1.PolicyLabel]
	if policyName == "" {
		return decision{outcome: OutcomeNoLabel, message: "pod has no " + v1alpha1.PolicyLabel + " label"}
	}
	log = log.With(zap.String("policy", policyName))
	if t.dryRun {
		return decision{outcome: OutcomeDryRun, message: "dry run: no push"}
	}

	var policy v1alpha1.WorkloadPolicy
	if err := a.Cache.Get(ctx, client.ObjectKey{Namespace: t.namespace, Name: policyName}, &policy); err != nil {
		if apierrors.IsNotFound(err) {
			note := fmt.Sprintf("WorkloadPolicy %q does not exist in namespace %s: the pod runs without execgate enforcement", policyName, t.namespace)
			a.event(pod, ReasonPolicyNotFound, note)
			log.Info("policy not found; pod runs unenforced")
			return decision{outcome: OutcomeNoPolicy, message: note, warnings: []string{"execgate: " + note}}
		}
		log.Error("read policy", zap.Error(err))
		return decision{outcome: agents.OutcomeError, message: "policy lookup failed", warnings: []string{"execgate: read policy: " + err.Error()}}
	}
	if policy.DeletionTimestamp != nil {
		// Kept only for the pods bound to it before its deletion (PolicyReconciler).
		note := fmt.Sprintf("WorkloadPolicy %q in namespace %s is being deleted: the pod runs without execgate enforcement", policyName, t.namespace)
		a.event(pod, ReasonPolicyNotFound, note)
		return decision{outcome: OutcomeNoPolicy, message: note, warnings: []string{"execgate: " + note}}
	}
	var warnings []string
	if policy.Spec.Mode == v1alpha1.ModeProtect {
		if rw := agents.WritableRootContainers(pod); len(rw) > 0 {
			note := fmt.Sprintf("containers %s have a writable root filesystem: under Protect an allowed path there can be overwritten with another program, which then runs as the allowed one; set securityContext.readOnlyRootFilesystem: true", strings.Join(rw, ", "))
			a.event(pod, ReasonWritableRootFilesystem, note)
			writableRootPodsTotal.WithLabelValues(t.namespace, policyName).Inc()
			warnings = append(warnings, "execgate: "+note)
		}
	}
	req, err := agents.CompilePodPolicy(pod, t.node, &policy, t.requestID)
	if err != nil {
		a.event(pod, ReasonPolicyInvalid, err.Error())
		log.Warn("policy cannot be compiled", zap.Error(err))
		return decision{outcome: agents.OutcomeError, message: "policy invalid", warnings: []string{"execgate: " + err.Error()}}
	}
	outcome, err := a.Pusher.Push(ctx, t.node, req)
	log = log.With(zap.Int64("generation", policy.Generation), zap.String("outcome", string(outcome)))
	if isResourceExhausted(err) {
		note := fmt.Sprintf("WorkloadPolicy %q does not fit on node %s: under Protect the pod's containers may execute nothing until it fits (the agent binds it deny-all); shrink the policy or raise the chart's agent.maxEntries / agent.namespaceSharePercent: %v", policyName, t.node, err)
		a.event(pod, ReasonPolicyCapacityExceeded, note)
		policyCapacityRefusalsTotal.WithLabelValues(t.namespace, policyName).Inc()
		log.Warn("policy does not fit on the node; the agent holds the pod", zap.Error(err))
		return decision{outcome: outcome, message: "policy does not fit on the node", warnings: append(warnings, "execgate: "+note)}
	}
	if err != nil {
		log.Warn("push failed; allowing the binding (fail open, the reconciler retries)", zap.Error(err))
		return decision{outcome: outcome, message: "push failed", warnings: append(warnings, "execgate: "+err.Error())}
	}
	log.Debug("policy pushed")
	return decision{outcome: outcome, message: fmt.Sprintf("policy %s generation %d in force on node %s", policyName, policy.Generation, t.node), warnings: warnings}
}

// isResourceExhausted reports an agent's refusal for capacity (ErrLimitExceeded on the
// node), wrapped or not.
func isResourceExhausted(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se) && se.GRPCStatus().Code() == codes.ResourceExhausted
}

// lookupPod reads the pod from the cache, else (cache miss, or a stale pod with another
// UID) from the API server within LookupTimeout.
func (a *Admitter) lookupPod(ctx context.Context, t admissionTarget) (*corev1.Pod, error) {
	key := client.ObjectKey{Namespace: t.namespace, Name: t.name}
	pod := &corev1.Pod{}
	err := a.Cache.Get(ctx, key, pod)
	if err == nil && (t.uid == "" || pod.UID == t.uid) {
		return pod, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		a.logger().Debug("pod cache read failed; asking the API server", zap.String("namespace", t.namespace), zap.String("pod", t.name), zap.Error(err))
	}
	timeout := a.LookupTimeout
	if timeout <= 0 {
		timeout = DefaultLookupTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pod = &corev1.Pod{}
	if err := a.APIReader.Get(ctx, key, pod); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", t.namespace, t.name, err)
	}
	return pod, nil
}

func (a *Admitter) event(pod *corev1.Pod, reason, note string) {
	if a.Recorder != nil {
		a.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, reason, "Bind", "%s", note)
	}
}

func (a *Admitter) logger() *zap.Logger {
	if a.Log == nil {
		return zap.NewNop()
	}
	return a.Log
}

// respond counts the outcome and turns the decision into an allowed response.
func (a *Admitter) respond(req admission.Request, d decision) admission.Response {
	bindingsTotal.WithLabelValues(string(d.outcome)).Inc()
	if d.outcome == OutcomeInvalidRequest {
		a.logger().Warn("malformed admission request; allowed", zap.String("requestID", string(req.UID)), zap.Strings("warnings", d.warnings))
	}
	resp := admission.Allowed(string(d.outcome) + ": " + d.message)
	resp.Result.Code = http.StatusOK
	warnings := make([]string, len(d.warnings))
	for i, w := range d.warnings {
		warnings[i] = sanitizeWarning(w)
	}
	return resp.WithWarnings(warnings...)
}

// maxWarningBytes keeps a warning readable in kubectl; the API server truncates long ones.
const maxWarningBytes = 256

// sanitizeWarning keeps a warning printable: errors can quote request bytes.
func sanitizeWarning(w string) string {
	w = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, w)
	if len(w) > maxWarningBytes {
		w = strings.ToValidUTF8(w[:maxWarningBytes], "") + "..."
	}
	return w
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
