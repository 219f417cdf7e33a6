package webhook

import (
	"strings"
	"testing"
	"time"
)

// TestConfigAgentIdentityFlags: the controller reaches agents only with a client
// certificate, either given or minted from the agent CA, and signs agent certificates only
// for a named service account.
func TestConfigAgentIdentityFlags(t *testing.T) {
	base := func() Config {
		return Config{PushTimeout: time.Second, LookupTimeout: 250 * time.Millisecond, WebhookPort: 9443, AgentCAFile: "/ca", AgentEndpoints: "n=127.0.0.1:1"}
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"given client certificate", func(c *Config) { c.AgentCertFile, c.AgentKeyFile = "/c", "/k" }, ""},
		{"minted client certificate", func(c *Config) {
			c.AgentSignerCertFile, c.AgentSignerKeyFile, c.AgentClientDir, c.AgentServiceAccount = "/s", "/sk", "/run", "ns/agent"
		}, ""},
		{"bundle published", func(c *Config) {
			c.AgentSignerCertFile, c.AgentSignerKeyFile, c.AgentClientDir, c.AgentServiceAccount = "/s", "/sk", "/run", "ns/agent"
			c.AgentCABundleConfigMap = "ns/bundle"
		}, ""},
		{"no client certificate at all", func(*Config) {}, "--agent-client-cert-file"},
		{"certificate without key", func(c *Config) { c.AgentCertFile = "/c" }, "go together"},
		{"no CA bundle", func(c *Config) { c.AgentCertFile, c.AgentKeyFile, c.AgentCAFile = "/c", "/k", "" }, "--agent-ca-file"},
		{"signer without service account", func(c *Config) {
			c.AgentSignerCertFile, c.AgentSignerKeyFile, c.AgentClientDir = "/s", "/sk", "/run"
		}, "--agent-service-account"},
		{"signer key missing", func(c *Config) {
			c.AgentCertFile, c.AgentKeyFile, c.AgentSignerCertFile, c.AgentServiceAccount = "/c", "/k", "/s", "ns/agent"
		}, "go together"},
		{"bundle without signer", func(c *Config) {
			c.AgentCertFile, c.AgentKeyFile, c.AgentCABundleConfigMap = "/c", "/k", "ns/bundle"
		}, "--agent-ca-bundle-configmap"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(&c)
			_, _, err := c.validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
