// Package memlocktest starts real memcached and redis-server processes on
// loopback ports for tests and benchmarks of code that uses memlock, the way
// net/http/httptest starts HTTP servers. The binaries come from PATH
// (Debian: apt-get install -y memcached redis-server).
//
// A Server can be paused (SIGSTOP), killed and restarted on the same port,
// which is what fault tests need.
package memlocktest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinary is returned when the server's binary is not on PATH.
var ErrNoBinary = errors.New("memlocktest: server binary not found on PATH")

// startTimeout bounds how long a started server may take to accept
// connections.
const startTimeout = 10 * time.Second

// Server is one memcached or redis-server child process on 127.0.0.1. Its
// methods are safe for use by several goroutines.
type Server struct {
	name string
	bin  string
	args []string
	addr string
	dir  string // removed by Close; "" for none

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil when not running
	exited chan struct{} // closed when cmd has been reaped
	out    *tail         // the last output of the current process
}

// StartMemcached starts memcached on a free loopback port, with extra
// command-line arguments appended (for example "-m", "8").
func StartMemcached(extra ...string) (*Server, error) {
	args := []string{"-l", "127.0.0.1", "-U", "0", "-t", "2", "-c", "1024"}
	if os.Geteuid() == 0 {
		// memcached refuses to run as root unless told which user to be.
		args = append(args, "-u", "root")
	}
	return start("memcached", func(port int) []string {
		return append(append(args, "-p", strconv.Itoa(port)), extra...)
	})
}

// StartRedis starts redis-server on a free loopback port with persistence
// off, with extra configuration arguments appended (for example
// "--replicaof", "127.0.0.1", "6379"). Files it writes (a replica's copy of
// its primary) go to a temporary directory that Close removes.
func StartRedis(extra ...string) (*Server, error) {
	dir, err := os.MkdirTemp("", "memlocktest-redis-")
	if err != nil {
		return nil, fmt.Errorf("memlocktest: %w", err)
	}
	s, err := start("redis-server", func(port int) []string {
		args := []string{
			"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			"--protected-mode", "no", "--repl-diskless-sync-delay", "0",
			"--loglevel", "warning", "--logfile", "", "--dir", dir,
		}
		return append(args, extra...)
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.dir = dir
	return s, nil
}

func start(name string, args func(port int) []string) (*Server, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s (install it with: apt-get install -y memcached redis-server)", ErrNoBinary, name)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{name: name, bin: bin, args: args(port), addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	if err := s.launch(); err != nil {
		return nil, err
	}
	return s, nil
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the server binds it; launch then fails clearly.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("memlocktest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// launch starts the process and waits until it accepts connections.
func (s *Server) launch() error {
	cmd := exec.Command(s.bin, s.args...)
	out := &tail{}
	cmd.Stdout = out
	cmd.Stderr = out
	// Its own process group, so a ^C to the test does not reach it first and
	// signals we send reach only it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("memlocktest: start %s: %w", s.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited, s.out = cmd, exited, out
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("memlocktest: %s exited at start on %s: %s", s.name, s.addr, out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("memlocktest: %s did not accept connections on %s within %v", s.name, s.addr, startTimeout)
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Pause stops the process with SIGSTOP: it keeps its port and its data,
// the kernel still completes TCP handshakes, but nothing is answered.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused process with SIGCONT.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("memlocktest: %s is not running", s.name)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("memlocktest: signal %s: %w", s.name, err)
	}
	return nil
}

// Kill ends the process with SIGKILL and waits until it is gone; its data
// is lost. Killing a server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// Restart kills the server and starts it again on the same port, empty.
func (s *Server) Restart() error {
	s.Kill()
	return s.launch()
}

// Close kills the server and removes its files. It is safe to call more
// than once.
func (s *Server) Close() {
	s.Kill()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// tail keeps the last few KiB a process wrote, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 4 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}
