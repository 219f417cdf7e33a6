package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

const (
	// GroupName is the API group of every execgate resource.
	GroupName = "execgate.io"
	// Version is the API version of this package.
	Version = "v1alpha1"
)

var (
	// GroupVersion identifies this package's API.
	GroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}
	// SchemeGroupVersion is GroupVersion under the name client-go style generators expect.
	SchemeGroupVersion = GroupVersion

	// SchemeBuilder is apimachinery's builder, not controller-runtime's, so that this
	// package depends on apimachinery alone.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme registers this package's types with a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Resource returns a GroupResource of this API group, as apierrors constructors want it.
func Resource(resource string) schema.GroupResource {
	return GroupVersion.WithResource(resource).GroupResource()
}

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion,
		&WorkloadPolicy{}, &WorkloadPolicyList{},
		&WorkloadPolicyProposal{}, &WorkloadPolicyProposalList{},
		&ExecgateNode{}, &ExecgateNodeList{},
	)
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
