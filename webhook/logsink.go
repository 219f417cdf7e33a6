package webhook

import (
	"github.com/go-logr/logr"
	"go.uber.org/zap"
)

// zapSink hands controller-runtime's logr output to zap, so the binary writes one log
// format. logr V-levels map to zap Debug (any V > 0) and Info.
type zapSink struct {
	log *zap.Logger
}

func (s *zapSink) Init(logr.RuntimeInfo) {}

func (s *zapSink) Enabled(level int) bool {
	if level > 0 {
		return s.log.Core().Enabled(zap.DebugLevel)
	}
	return s.log.Core().Enabled(zap.InfoLevel)
}

func (s *zapSink) Info(level int, msg string, kv ...any) {
	if level > 0 {
		s.log.Debug(msg, fields(kv)...)
		return
	}
	s.log.Info(msg, fields(kv)...)
}

func (s *zapSink) Error(err error, msg string, kv ...any) {
	s.log.Error(msg, append(fields(kv), zap.Error(err))...)
}

func (s *zapSink) WithValues(kv ...any) logr.LogSink {
	return &zapSink{log: s.log.With(fields(kv)...)}
}

func (s *zapSink) WithName(name string) logr.LogSink {
	return &zapSink{log: s.log.Named(name)}
}

func fields(kv []any) []zap.Field {
	out := make([]zap.Field, 0, len(kv)/2+1)
	for i := 0; i+1 < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			key = "badKey"
		}
		out = append(out, zap.Any(key, kv[i+1]))
	}
	if len(kv)%2 == 1 {
		out = append(out, zap.Any("danglingValue", kv[len(kv)-1]))
	}
	return out
}
