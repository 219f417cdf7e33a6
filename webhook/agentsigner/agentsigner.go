// Package agentsigner is the controller's signer of node agents' serving
// certificates (signer execgate.io/agent-serving, see nodeagent/agentcert).
//
// It owns the decision to issue: a CertificateSigningRequest is approved and
// signed only if the API server recorded it as coming from the agent's service
// account with a pod-bound token whose node (user extra
// authentication.kubernetes.io/node-name) is the one node the request names,
// and it asks for server usage only. Everything else is denied with a reason.
// The certificate it signs names that node (DNS SAN), carries server auth
// only, and lives at most MaxLifetime. So the key of one node's agent can
// answer only for that node, and never act as a client of another agent.
//
// It must not touch agents or pods: it reads CSRs and the CA files, and
// writes CSR approval and status.
package agentsigner

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/execgate/execgate/nodeagent/agentcert"
)

// DefaultMaxLifetime caps a signed certificate's lifetime.
const DefaultMaxLifetime = 7 * 24 * time.Hour

var csrDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "execgate_controller_agent_csr_total",
	Help: "Agent serving certificate requests decided by the controller, by result (signed, denied, failed).",
}, []string{"result"})

func init() { metrics.Registry.MustRegister(csrDecisions) }

// Signer reconciles CSRs of SignerName.
type Signer struct {
	Client client.Client
	// NodeReader reads the Node a request names (the API reader: no node watch).
	// Default Client.
	NodeReader client.Reader
	// AgentUsername is the agents' service account user,
	// "system:serviceaccount:<namespace>:<name>".
	AgentUsername string
	// CACertFile and CAKeyFile are the agent CA; read on every signature, so a
	// rotated CA is used without a restart.
	CACertFile, CAKeyFile string
	MaxLifetime           time.Duration
	Recorder              events.EventRecorder // optional
	Log                   *zap.Logger
}

// SetupWithManager registers the reconciler for CSRs of the agent signer only.
func (s *Signer) SetupWithManager(mgr ctrl.Manager) error {
	if s.AgentUsername == "" || s.CACertFile == "" || s.CAKeyFile == "" {
		return errors.New("agent signer: agent username, CA certificate and CA key files are required")
	}
	if _, _, err := s.loadCA(); err != nil {
		return fmt.Errorf("agent signer: %w", err)
	}
	ours := predicate.NewPredicateFuncs(func(o client.Object) bool {
		csr, ok := o.(*certificatesv1.CertificateSigningRequest)
		return ok && csr.Spec.SignerName == agentcert.SignerName
	})
	return ctrl.NewControllerManagedBy(mgr).Named("agentsigner").
		For(&certificatesv1.CertificateSigningRequest{}, builder.WithPredicates(ours)).
		Complete(s)
}

// Reconcile decides one CSR.
func (s *Signer) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var csr certificatesv1.CertificateSigningRequest
	if err := s.Client.Get(ctx, req.NamespacedName, &csr); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if csr.Spec.SignerName != agentcert.SignerName || len(csr.Status.Certificate) > 0 || decided(&csr) {
		return ctrl.Result{}, nil
	}
	log := s.logger().With(zap.String("csr", csr.Name), zap.String("username", csr.Spec.Username))
	node, tmpl, err := s.check(ctx, &csr)
	if err != nil {
		log.Warn("agent certificate request denied", zap.Error(err))
		csrDecisions.WithLabelValues("denied").Inc()
		return ctrl.Result{}, s.deny(ctx, &csr, err)
	}
	if !approved(&csr) {
		csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "AgentOfNode",
			Message:        fmt.Sprintf("requested by the execgate agent's service account from a pod on node %s", node),
			LastUpdateTime: metav1.Now(),
		})
		if err := s.Client.SubResource("approval").Update(ctx, &csr); err != nil {
			return ctrl.Result{}, fmt.Errorf("approve %s: %w", csr.Name, err)
		}
	}
	certPEM, err := s.sign(tmpl, lifetime(&csr, s.maxLifetime()))
	if err != nil {
		csrDecisions.WithLabelValues("failed").Inc()
		return ctrl.Result{}, fmt.Errorf("sign %s: %w", csr.Name, err)
	}
	csr.Status.Certificate = certPEM
	if err := s.Client.Status().Update(ctx, &csr); err != nil {
		return ctrl.Result{}, fmt.Errorf("write certificate of %s: %w", csr.Name, err)
	}
	csrDecisions.WithLabelValues("signed").Inc()
	log.Info("agent serving certificate signed", zap.String("node", node))
	return ctrl.Result{}, nil
}

// check returns the node the request may be signed for and the certificate
// template, or why it may not.
func (s *Signer) check(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) (string, *x509.Certificate, error) {
	if csr.Spec.Username != s.AgentUsername {
		return "", nil, fmt.Errorf("requested by %q, not by the agents' service account %q", csr.Spec.Username, s.AgentUsername)
	}
	nodes := csr.Spec.Extra[agentcert.NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return "", nil, fmt.Errorf("the requester's token is not bound to a pod on a node (user extra %s = %v; Kubernetes 1.30+ sets it for pod-bound tokens)", agentcert.NodeNameExtra, []string(nodes))
	}
	node := nodes[0]
	usages := slices.Clone(csr.Spec.Usages)
	slices.Sort(usages)
	want := slices.Clone(agentcert.Usages)
	slices.Sort(want)
	if !slices.Equal(usages, want) {
		return "", nil, fmt.Errorf("usages %v: an agent certificate has exactly %v", csr.Spec.Usages, agentcert.Usages)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return "", nil, errors.New("spec.request holds no PEM CERTIFICATE REQUEST")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return "", nil, fmt.Errorf("parse spec.request: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return "", nil, fmt.Errorf("spec.request signature: %w", err)
	}
	if !slices.Equal(req.DNSNames, []string{node}) || len(req.IPAddresses) > 0 || len(req.URIs) > 0 || len(req.EmailAddresses) > 0 ||
		(req.Subject.CommonName != "" && req.Subject.CommonName != node) {
		return "", nil, fmt.Errorf("the request names CN %q, DNS %v, IPs %v, URIs %v: an agent on node %s may name only %q",
			req.Subject.CommonName, req.DNSNames, req.IPAddresses, req.URIs, node, node)
	}
	reader := s.NodeReader
	if reader == nil {
		reader = s.Client
	}
	var n corev1.Node
	if err := reader.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
		if apierrors.IsNotFound(err) {
			return "", nil, fmt.Errorf("node %s does not exist", node)
		}
		return "", nil, fmt.Errorf("read node %s: %w", node, err)
	}
	return node, &x509.Certificate{
		Subject:     pkix.Name{CommonName: node},
		DNSNames:    []string{node},
		PublicKey:   req.PublicKey,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, nil
}

func (s *Signer) deny(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, why error) error {
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateDenied, Status: corev1.ConditionTrue, Reason: "NotAgentOfNode",
		Message: why.Error(), LastUpdateTime: metav1.Now(),
	})
	if err := s.Client.SubResource("approval").Update(ctx, csr); err != nil {
		return fmt.Errorf("deny %s: %w", csr.Name, err)
	}
	if s.Recorder != nil {
		s.Recorder.Eventf(csr, nil, corev1.EventTypeWarning, "AgentCertificateDenied", "Deny", "%s", why.Error())
	}
	return nil
}

func (s *Signer) loadCA() (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(s.CACertFile, s.CAKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("load agent CA: %w", err)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("parse agent CA: %w", err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !ca.IsCA {
		return nil, nil, errors.New("agent CA: not a CA certificate with a signing key")
	}
	return ca, key, nil
}

func (s *Signer) sign(tmpl *x509.Certificate, life time.Duration) ([]byte, error) {
	ca, key, err := s.loadCA()
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-5 * time.Minute) // clock skew between nodes
	tmpl.NotAfter = now.Add(life)
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, tmpl.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func (s *Signer) maxLifetime() time.Duration {
	if s.MaxLifetime > 0 {
		return s.MaxLifetime
	}
	return DefaultMaxLifetime
}

func (s *Signer) logger() *zap.Logger {
	if s.Log == nil {
		return zap.NewNop()
	}
	return s.Log
}

func lifetime(csr *certificatesv1.CertificateSigningRequest, maxLife time.Duration) time.Duration {
	if e := csr.Spec.ExpirationSeconds; e != nil && *e > 0 {
		return min(time.Duration(*e)*time.Second, maxLife)
	}
	return maxLife
}

func approved(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

func decided(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateDenied || c.Type == certificatesv1.CertificateFailed {
			return true
		}
	}
	return false
}
