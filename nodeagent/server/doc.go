// Package server is the node agent's gRPC endpoint (execgate.agent.v1.AgentService).
//
// It owns the transport and the edge of the agent: mutual TLS with
// certificates and CA re-read from disk when they rotate, the optional check
// of the client's identity, validation of every request where it enters
// (validate.go), mapping backend errors to gRPC codes, and the server's
// Prometheus metrics. Valid requests are converted to proto-free
// nodeagent/podpolicy values and handed to a Backend.
//
// It must not touch BPF, cgroups or Kubernetes: everything stateful happens
// behind the Backend interface, implemented by the agent (package nodeagent/agent).
// Clients (the webhook) dial with nodeagent/agentclient and never import this
// package.
package server
