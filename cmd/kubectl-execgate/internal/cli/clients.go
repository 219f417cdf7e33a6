package cli

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
)

// scheme knows the core types and execgate's.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // registering built-in types cannot fail
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// clients reach the API server the kubeconfig names.
type clients struct {
	// objects reads and writes typed objects (execgate's and core).
	objects client.Client
	// kube lists and watches Events.
	kube kubernetes.Interface
	// namespace is -n, else the kubeconfig context's namespace, else "default".
	namespace string
}

// connect loads the kubeconfig the way kubectl does: --kubeconfig, else $KUBECONFIG,
// else ~/.kube/config; --context and -n override the current context's.
func (o *options) connect() (*clients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.kubeContext}
	overrides.Context.Namespace = o.namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("namespace of the kubeconfig context: %w", err)
	}
	cfg.UserAgent = "kubectl-execgate"
	// API deprecation warnings go to stderr as kubectl prints them, rather than to
	// controller-runtime's logger.
	cfg.WarningHandler = rest.NewWarningWriter(o.stderr, rest.WarningWriterOptions{Deduplicate: true})
	objects, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &clients{objects: objects, kube: kube, namespace: ns}, nil
}

// explainAPIError turns "no matches for kind" into what the user should do.
func explainAPIError(err error, what string) error {
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("%s: the execgate CRDs are not installed in this cluster (install or upgrade the execgate Helm chart): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
