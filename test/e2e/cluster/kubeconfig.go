package cluster

import (
	"fmt"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identity is a user and groups that a client certificate authenticates as.
type Identity struct {
	User   string
	Groups []string
	// Extra, when set, is authentication info no client certificate carries (the node
	// name of a pod-bound service account token, authentication.kubernetes.io/node-name):
	// the client then authenticates as the cluster admin and impersonates User, Groups
	// and Extra, so that authorization and admission see exactly this identity.
	Extra map[string][]string
}

var (
	adminIdentity     = Identity{User: "execgate-e2e-admin", Groups: []string{"system:masters"}}
	schedulerIdentity = Identity{User: "system:kube-scheduler"}
)

// writeKubeconfig writes a self-contained kubeconfig (certificates embedded) for id to
// path and returns it.
func writeKubeconfig(path, serverURL string, ca *CertificateAuthority, id Identity) error {
	cert := id
	if len(id.Extra) > 0 {
		cert = adminIdentity
	}
	pair, err := ca.IssueClientCert(cert.User, cert.Groups...)
	if err != nil {
		return err
	}
	const name = "execgate-e2e"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: ca.CertPEM}
	auth := &clientcmdapi.AuthInfo{ClientCertificateData: pair.CertPEM, ClientKeyData: pair.KeyPEM}
	if len(id.Extra) > 0 {
		auth.Impersonate, auth.ImpersonateGroups, auth.ImpersonateUserExtra = id.User, id.Groups, id.Extra
	}
	cfg.AuthInfos[id.User] = auth
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: id.User}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig for %s: %w", id.User, err)
	}
	return nil
}

// KubeconfigFor issues a client certificate for id and writes a kubeconfig for it to
// <Dir>/<file>, returning the path. Use it for components that authenticate as
// something other than cluster-admin, e.g. Identity{User: "system:node:node-0",
// Groups: []string{"system:nodes"}} for code that must pass the Node authorizer.
func (c *Cluster) KubeconfigFor(id Identity, file string) (string, error) {
	path := filepath.Join(c.Dir, file)
	if err := writeKubeconfig(path, c.APIServerURL, c.CA, id); err != nil {
		return "", err
	}
	return path, nil
}

// RESTConfigFor returns a *rest.Config that authenticates as id.
func (c *Cluster) RESTConfigFor(id Identity) (*rest.Config, error) {
	cert := id
	if len(id.Extra) > 0 {
		cert = adminIdentity
	}
	pair, err := c.CA.IssueClientCert(cert.User, cert.Groups...)
	if err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(c.RESTConfig)
	if len(id.Extra) > 0 {
		cfg.Impersonate = rest.ImpersonationConfig{UserName: id.User, Groups: id.Groups, Extra: id.Extra}
	}
	cfg.CertData = pair.CertPEM
	cfg.KeyData = pair.KeyPEM
	cfg.CertFile, cfg.KeyFile = "", ""
	return cfg, nil
}

// restConfigFromKubeconfig loads path and raises client-side rate limits, which
// only slow tests down against a private API server.
func restConfigFromKubeconfig(path string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	return cfg, nil
}
