// Package kube gives cluster-level phases their access to the Kubernetes
// API: a client configuration from the kubeconfig the profile names
// (spec.cluster), until the rke2 phase publishes the admin kubeconfig of the
// cluster it installs as its typed output, which fills the same slot.
package kube

import (
	"errors"
	"fmt"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"castellan/installer/buildinfo"
	"castellan/installer/profile"
)

// ErrNoAccess means the profile names no kubeconfig.
var ErrNoAccess = errors.New("no access to the cluster's API: set spec.cluster.kubeconfig to a kubeconfig with admin rights (the rke2 phase will provide it for clusters castellan installs)")

// RequestTimeout bounds each API request.
const RequestTimeout = 30 * time.Second

// FromProfile returns the client configuration of the profile's
// spec.cluster: the kubeconfig file (resolved against the profile's
// directory) and its context (default: its current-context). Errors:
// ErrNoAccess, or the kubeconfig's problem with its path.
func FromProfile(p *profile.Profile) (*rest.Config, error) {
	c := p.Spec.Cluster
	if c.Kubeconfig == "" {
		return nil, ErrNoAccess
	}
	return Load(p.Resolve(c.Kubeconfig), c.Context)
}

// Load reads the kubeconfig at path (format: kubernetes.io/docs/concepts/
// configuration/organize-cluster-access-kubeconfig) and returns the client
// configuration of context (empty: its current-context), with castellan's
// user agent and a per-request timeout. Only this file is read: no
// $KUBECONFIG, no in-cluster configuration.
func Load(path, context string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: context}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		if context != "" {
			return nil, fmt.Errorf("kubeconfig %s, context %q: %w", path, context, err)
		}
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg.UserAgent = "castellan/" + buildinfo.Version()
	cfg.Timeout = RequestTimeout
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}
