package embedded

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

func TestLoggerDropsShutdownNoiseOnlyWhileStopping(t *testing.T) {
	out := filepath.Join(t.TempDir(), "etcd.log")
	var stopping atomic.Bool
	lg, closeLog, err := newLogger("error", []string{out}, &stopping, new(atomic.Bool))
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	noise := "setting up serving from embedded etcd failed."
	closed := zap.Error(errors.New("accept tcp: use of closed network connection"))
	lg.Error(noise, closed) // not stopping: a real failure, kept
	stopping.Store(true)
	lg.Error(noise, closed)                    // dropped
	lg.Error("disk full", closed)              // kept: another message
	lg.With(zap.String("k", "v")).Error(noise) // dropped through With too
	lg.Sync()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if n := strings.Count(text, noise); n != 1 {
		t.Fatalf("noise lines %d, want 1:\n%s", n, text)
	}
	if !strings.Contains(text, "disk full") {
		t.Fatalf("other errors dropped:\n%s", text)
	}
}
