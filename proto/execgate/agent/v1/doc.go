// Package agentv1 is the node agent API (protobuf package execgate.agent.v1):
// the messages and the AgentService gRPC stubs generated from agent.proto.
//
// It owns the wire contract between the webhook (client) and the node agent
// (server). It must not contain hand-written logic: validation lives in
// nodeagent/server, dialing in nodeagent/agentclient. Regenerate with
// `make generate-proto`.
package agentv1
