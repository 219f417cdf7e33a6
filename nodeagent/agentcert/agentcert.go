// Package agentcert obtains and renews the node agent's gRPC serving
// certificate through the Kubernetes CertificateSigningRequest API: the agent
// makes a key that never leaves its node, asks for a certificate naming its
// node (DNS SAN = node name, server usage only) under SignerName, and the
// controller (webhook/agentsigner) signs it after checking that the request
// came from the agent's service account on that very node.
//
// It owns the key, the CSR object and the files it writes (tls.crt, tls.key in
// Dir), which nodeagent/server re-reads when they change. It must not decide
// whom to trust: the CA bundle the agent verifies the controller with comes
// from elsewhere (the chart's ConfigMap).
package agentcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/execgate/execgate/internal/atomicfile"
)

// SignerName is the signer of agent serving certificates. Only the controller
// may approve and sign for it (chart RBAC: signers "approve" and "sign").
const SignerName = "execgate.io/agent-serving"

// NodeNameExtra is the user extra the API server sets from a pod-bound service
// account token (Kubernetes 1.30+, ServiceAccountTokenPodNodeInfo): the node
// the token's pod runs on. The CSR records it as the requester's.
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// Usages are the only key usages an agent requests and the signer grants.
var Usages = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}

// Requester keeps a serving certificate for NodeName in Dir.
type Requester struct {
	Client   kubernetes.Interface
	NodeName string
	Dir      string
	// Lifetime requested (expirationSeconds); renewed after two thirds of it.
	// Default 24h.
	Lifetime time.Duration
	// Timeout for the controller to sign one request. Default 2m.
	Timeout time.Duration
	Log     *zap.Logger
}

// CertFile is the certificate's path, which the server reads.
func (r *Requester) CertFile() string { return filepath.Join(r.Dir, "tls.crt") }

// KeyFile is the key's path, which the server reads.
func (r *Requester) KeyFile() string { return filepath.Join(r.Dir, "tls.key") }

func (r *Requester) defaults() {
	if r.Lifetime <= 0 {
		r.Lifetime = 24 * time.Hour
	}
	if r.Timeout <= 0 {
		r.Timeout = 2 * time.Minute
	}
	if r.Log == nil {
		r.Log = zap.NewNop()
	}
}

// Ensure returns once Dir holds a certificate for NodeName valid for more than
// a third of Lifetime, requesting one if needed. The agent calls it before it
// serves: without a certificate naming its node no controller would talk to it.
func (r *Requester) Ensure(ctx context.Context) error {
	r.defaults()
	if leaf, err := r.current(); err == nil && time.Until(leaf.NotAfter) > r.Lifetime/3 {
		return nil
	}
	return r.request(ctx)
}

// Run renews the certificate until ctx ends. A failed renewal is retried every
// minute while the old certificate stays in use.
func (r *Requester) Run(ctx context.Context) error {
	r.defaults()
	for {
		wait := time.Minute
		if leaf, err := r.current(); err == nil {
			// At least a minute apart: a certificate capped by a CA that expires soon
			// must not make the agent file CSRs in a loop.
			wait = max(time.Until(leaf.NotAfter)-r.Lifetime/3, time.Minute)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if err := r.Ensure(ctx); err != nil && ctx.Err() == nil {
			r.Log.Warn("agent serving certificate not renewed; retrying in a minute", zap.Error(err))
		}
	}
}

func (r *Requester) current() (*x509.Certificate, error) {
	data, err := os.ReadFile(r.CertFile())
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := leaf.VerifyHostname(r.NodeName); err != nil {
		return nil, err
	}
	return leaf, nil
}

func (r *Requester) request(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: r.NodeName}, DNSNames: []string{r.NodeName},
	}, key)
	if err != nil {
		return fmt.Errorf("create certificate request: %w", err)
	}
	seconds := int32(r.Lifetime / time.Second)
	csr, err := r.Client.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "execgate-agent-" + r.NodeName + "-"},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
			SignerName: SignerName, Usages: Usages, ExpirationSeconds: &seconds,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create CertificateSigningRequest: %w", err)
	}
	log := r.Log.With(zap.String("csr", csr.Name))
	log.Info("requested agent serving certificate", zap.Duration("lifetime", r.Lifetime))

	var certPEM []byte
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, r.Timeout, true, func(ctx context.Context) (bool, error) {
		got, err := r.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, csr.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil // transient: keep polling until the timeout
		}
		for _, c := range got.Status.Conditions {
			if c.Type == certificatesv1.CertificateDenied || c.Type == certificatesv1.CertificateFailed {
				return false, fmt.Errorf("CertificateSigningRequest %s %s: %s", got.Name, c.Type, c.Message)
			}
		}
		certPEM = got.Status.Certificate
		return len(certPEM) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("wait for the controller to sign %s: %w", csr.Name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := writeAtomic(r.KeyFile(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	if err := writeAtomic(r.CertFile(), certPEM); err != nil {
		return err
	}
	if leaf, err := r.current(); err != nil {
		return fmt.Errorf("signed certificate of %s does not name node %s: %w", csr.Name, r.NodeName, err)
	} else if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return fmt.Errorf("signed certificate of %s is not for the requested key", csr.Name)
	}
	log.Info("agent serving certificate installed")
	return nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	return atomicfile.Write(path, data, 0o600)
}
