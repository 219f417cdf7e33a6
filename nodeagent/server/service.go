package server

import (
	"context"
	"errors"
	"path"
	"runtime/debug"
	"slices"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// service implements AgentService: validate, call the backend, map errors.
type service struct {
	agentv1.UnimplementedAgentServiceServer
	backend  Backend
	nodeName string
	log      *zap.Logger
	metrics  *metrics
	stopping <-chan struct{}
}

func (s *service) ApplyPodPolicy(ctx context.Context, req *agentv1.ApplyPodPolicyRequest) (_ *agentv1.ApplyPodPolicyResponse, err error) {
	start := time.Now()
	defer func() {
		s.metrics.applyDuration.WithLabelValues(status.Code(err).String()).Observe(time.Since(start).Seconds())
	}()

	pp, err := validateApplyPodPolicy(req)
	if err != nil {
		return nil, err
	}
	log := s.log.With(
		zap.String("namespace", pp.Pod.Namespace),
		zap.String("pod", pp.Pod.Name),
		zap.String("pod_uid", pp.Pod.UID),
		zap.String("policy", pp.Policy.Key()),
		zap.Uint64("version", pp.Policy.Version),
		zap.Stringer("mode", pp.Policy.Mode),
		zap.String("request_id", pp.RequestID),
		peerField(ctx),
	)
	if pp.Pod.NodeName != s.nodeName {
		err := status.Errorf(codes.FailedPrecondition, "pod.node_name is %q but this agent runs on node %q; send the request to the agent of the pod's node", pp.Pod.NodeName, s.nodeName)
		log.Warn("pod policy refused: wrong node", zap.Error(err))
		return nil, err
	}
	applied, loaded, err := s.backend.ApplyPodPolicy(ctx, pp)
	if err != nil {
		err = backendStatus("apply pod policy", err)
		log.Error("pod policy not applied", zap.Error(err))
		return nil, err
	}
	if applied {
		log.Info("pod policy applied", zap.Uint64("loaded_version", loaded), zap.Int("entries", pp.Policy.Entries()))
	} else {
		log.Debug("pod policy already loaded", zap.Uint64("loaded_version", loaded))
	}
	return &agentv1.ApplyPodPolicyResponse{Applied: applied, LoadedVersion: loaded}, nil
}

func (s *service) RemovePod(ctx context.Context, req *agentv1.RemovePodRequest) (*agentv1.RemovePodResponse, error) {
	if err := validateRemovePod(req); err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("pod_uid", req.GetPodUid()), zap.String("request_id", req.GetRequestId()), peerField(ctx))
	removed, err := s.backend.RemovePod(ctx, req.GetPodUid())
	if err != nil {
		err = backendStatus("remove pod", err)
		log.Error("pod not removed", zap.Error(err))
		return nil, err
	}
	log.Info("pod removed", zap.Bool("was_known", removed))
	return &agentv1.RemovePodResponse{Removed: removed}, nil
}

func (s *service) RemovePolicy(ctx context.Context, req *agentv1.RemovePolicyRequest) (*agentv1.RemovePolicyResponse, error) {
	ref, err := validateRemovePolicy(req)
	if err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("policy", ref.Key()), zap.String("request_id", req.GetRequestId()), peerField(ctx))
	removed, err := s.backend.RemovePolicy(ctx, ref)
	if err != nil {
		err = backendStatus("remove policy", err)
		log.Error("policy not removed", zap.Error(err))
		return nil, err
	}
	log.Info("policy removed", zap.Bool("was_loaded", removed))
	return &agentv1.RemovePolicyResponse{Removed: removed}, nil
}

func (s *service) GetStatus(ctx context.Context, _ *agentv1.GetStatusRequest) (*agentv1.AgentStatus, error) {
	st, err := s.backend.Status(ctx)
	if err != nil {
		err = backendStatus("get status", err)
		s.log.Error("status not available", zap.Error(err))
		return nil, err
	}
	if st == nil {
		return nil, status.Error(codes.Internal, "get status: backend returned no status")
	}
	return st, nil
}

func (s *service) WatchEvents(req *agentv1.WatchEventsRequest, stream grpc.ServerStreamingServer[agentv1.ExecEvent]) error {
	filter, err := validateWatchEvents(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	events, cancel := s.backend.Subscribe(ctx, filter)
	defer cancel()
	s.metrics.eventWatchers.Inc()
	defer s.metrics.eventWatchers.Dec()
	s.log.Debug("event watcher subscribed", peerField(ctx))
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "agent is shutting down")
		case ev, ok := <-events:
			if !ok {
				return status.Error(codes.Unavailable, "agent event source closed")
			}
			if ev == nil || !matchEvent(filter, ev) {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err // the client went away; the status is already set
			}
		}
	}
}

func matchEvent(f podpolicy.EventFilter, ev *agentv1.ExecEvent) bool {
	return (f.Namespace == "" || f.Namespace == ev.GetNamespace()) &&
		(f.Pod == "" || f.Pod == ev.GetPod()) &&
		(f.Container == "" || f.Container == ev.GetContainer()) &&
		(f.Policy == "" || f.Policy == ev.GetPolicy()) &&
		(len(f.Actions) == 0 || slices.Contains(f.Actions, podpolicy.Action(ev.GetAction())))
}

// backendStatus turns a backend error into a gRPC status the caller can act on.
func backendStatus(op string, err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, podpolicy.ErrLimitExceeded):
		code = codes.ResourceExhausted
	case errors.Is(err, podpolicy.ErrConflict):
		code = codes.FailedPrecondition
	case errors.Is(err, podpolicy.ErrNotReady):
		code = codes.Unavailable
	}
	return status.Errorf(code, "%s: %v", op, err)
}

func peerField(ctx context.Context) zap.Field {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return zap.Skip()
	}
	return clientIdentity(p.AuthInfo)
}

// unaryObserve counts requests by method and code and turns a panic into
// Internal instead of killing the agent (and the node's enforcement with it).
func (s *Server) unaryObserve(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in gRPC handler", zap.String("method", info.FullMethod), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error", path.Base(info.FullMethod))
		}
		s.metrics.requests.WithLabelValues(path.Base(info.FullMethod), status.Code(err).String()).Inc()
	}()
	return handler(ctx, req)
}

func (s *Server) streamObserve(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in gRPC stream handler", zap.String("method", info.FullMethod), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			err = status.Errorf(codes.Internal, "%s: internal error", path.Base(info.FullMethod))
		}
		s.metrics.requests.WithLabelValues(path.Base(info.FullMethod), status.Code(err).String()).Inc()
	}()
	return handler(srv, ss)
}
