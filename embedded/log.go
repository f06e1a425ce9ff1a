package embedded

import (
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds etcd's logger for a member. While the member is being
// stopped it drops etcd's "setting up serving ... failed" errors (a closed
// listener: "use of closed network connection", "server closed"), which etcd
// logs with a stack trace on every clean shutdown; every other entry goes
// through.
//
// close releases the outputs (a file stays open until then); call it once
// etcd has stopped.
//
// While quiet is set (a start with Config.QuietStart) every entry is
// dropped.
func newLogger(level string, outputs []string, stopping, quiet *atomic.Bool) (lg *zap.Logger, close func(), err error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	ws, close, err := zap.Open(outputs...)
	if err != nil {
		return nil, nil, err
	}
	// zap's production settings, without sampling, with readable times.
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), ws, zap.NewAtomicLevelAt(lvl))
	lg = zap.New(&shutdownFilter{Core: core, stopping: stopping, quiet: quiet},
		zap.ErrorOutput(ws), zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel))
	return lg, close, nil
}

type shutdownFilter struct {
	zapcore.Core
	stopping, quiet *atomic.Bool
}

func (f *shutdownFilter) With(fields []zapcore.Field) zapcore.Core {
	return &shutdownFilter{Core: f.Core.With(fields), stopping: f.stopping, quiet: f.quiet}
}

func (f *shutdownFilter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if f.Enabled(e.Level) {
		return ce.AddCore(e, f)
	}
	return ce
}

func (f *shutdownFilter) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if f.quiet.Load() {
		return nil
	}
	if f.stopping.Load() && strings.HasPrefix(e.Message, "setting up serving from embedded etcd failed") {
		return nil // a listener closed by the shutdown we asked for
	}
	return f.Core.Write(e, fields)
}
