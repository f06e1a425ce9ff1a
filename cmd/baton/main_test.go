package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/internal/testutil"
)

// The end-to-end tests build the baton binary once (with -race when the
// tests run with it, so that the race detector also watches the binary)
// and run it as a user would, against embedded etcd servers.

var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binError error
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == superviseArg {
		// A command run in-process (Main) re-executes this binary.
		os.Exit(runSupervisor(os.Args[2:]))
	}
	dir, err := os.MkdirTemp("", "baton-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// The same leak check as testutil.VerifyMain, plus removing the
	// binary once the tests are done.
	goleak.VerifyTestMain(m, append(testutil.LeakOptions(), goleak.Cleanup(func(int) { os.RemoveAll(dir) }))...)
}

// baton returns the path of the binary, building it on first use.
func baton(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		goBin := goCommand()
		binPath = filepath.Join(binDir, "baton")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command(goBin, append(args, ".")...).CombinedOutput()
		if err != nil {
			binError = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binError != nil {
		t.Fatal(binError)
	}
	return binPath
}

// goCommand is the go command of the toolchain running the tests.
func goCommand() string {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		return "go"
	}
	return goBin
}

// lines collects the lines a process writes to one stream, and lets a test
// wait for a line that contains some text.
type lines struct {
	mu      sync.Mutex
	all     []string
	changed chan struct{} // closed and replaced on each new line or EOF
	eof     bool
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (l *lines) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.all = append(l.all, sc.Text())
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.eof = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// waitFor returns the first line at index >= from that contains s, and
// the index after it.
func (l *lines) waitFor(t *testing.T, what string, from int, s string, timeout time.Duration) (string, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		for i := from; i < len(l.all); i++ {
			if strings.Contains(l.all[i], s) {
				line := l.all[i]
				l.mu.Unlock()
				return line, i + 1
			}
		}
		ch, eof := l.changed, l.eof
		all := strings.Join(l.all, "\n")
		l.mu.Unlock()
		if eof {
			t.Fatalf("%s ended without a line containing %q; it wrote:\n%s", what, s, all)
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: no line containing %q within %v; it wrote:\n%s", what, s, timeout, all)
		}
	}
}

// proc is a running baton.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdout *lines
	stderr *lines
	done   chan struct{}
	code   int
}

// testEnv is the environment of every baton a test runs: the process's
// own without baton's and etcdctl's variables, plus env.
func testEnv(env ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BATON_") || strings.HasPrefix(kv, "ETCDCTL_") {
			continue
		}
		out = append(out, kv)
	}
	out = append(out, "GORACE=halt_on_error=1")
	return append(out, env...)
}

// start runs baton with args in env (see testEnv). The process is stopped,
// if still running, when the test ends: SIGTERM first, so that it stops
// its CMD and releases, then SIGKILL.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startExe(t, baton(t), env, args...)
}

// startExe is start for any program: etcdctl, for one.
func startExe(t *testing.T, exe string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: filepath.Base(exe) + " " + strings.Join(args, " "), cmd: cmd, stdout: newLines(), stderr: newLines(), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); p.stdout.read(stdout) }()
	go func() { defer readers.Done(); p.stderr.read(stderr) }()
	go func() {
		readers.Wait() // Wait must not run before the pipes are drained
		err := cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.code = 128 + int(ws.Signal())
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-p.done
			}
		}
		if strings.Contains(p.stderr.text(), "WARNING: DATA RACE") {
			t.Errorf("%s: data race in the binary:\n%s", p.name, p.stderr.text())
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %v; stdout:\n%s\nstderr:\n%s", p.name, timeout, p.stdout.text(), p.stderr.text())
		return -1
	}
}

// waitCode waits for the exit and checks its code.
func (p *proc) waitCode(want int, timeout time.Duration) {
	p.t.Helper()
	if got := p.wait(timeout); got != want {
		p.t.Fatalf("%s: exit code %d, want %d; stdout:\n%s\nstderr:\n%s", p.name, got, want, p.stdout.text(), p.stderr.text())
	}
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// runBaton runs baton to the end and returns its exit code and output.
func runBaton(t *testing.T, env []string, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := start(t, env, args...)
	code = p.wait(timeout)
	return code, p.stdout.text(), p.stderr.text()
}

// inProcess runs Main with buffers, no environment and no signals.
func inProcess(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(args, &IO{In: strings.NewReader(""), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

// ctxT is a context bounded by d for the test's own etcd calls.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
