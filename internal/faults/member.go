//go:build linux

package faults

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/pkg/v3/proxy"

	"github.com/batonhq/baton/embedded"
)

// Environment variables that select and configure a child role of the test
// binary.
const (
	roleEnv   = "BATON_FAULTS_ROLE"
	configEnv = "BATON_FAULTS_CONFIG"
)

// memberConfig is what a member process is started with.
type memberConfig struct {
	Name            string
	Dir             string
	ListenClient    string // real listener, 127.0.0.1
	AdvertiseClient string // the client proxy
	ListenPeer      string
	AdvertisePeer   string // the peer proxy
	InitialCluster  string
	LogPath         string
}

// runMember is the body of a member process: it runs one etcd member until
// SIGTERM. It prints "ready" on stdout once the member serves.
func runMember() int {
	var c memberConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "faults: member config:", err)
		return 2
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	s, err := embedded.Start(embedded.Config{
		Name:                c.Name,
		Dir:                 c.Dir,
		ListenClientURLs:    []string{"http://" + c.ListenClient},
		AdvertiseClientURLs: []string{"http://" + c.AdvertiseClient},
		ListenPeerURLs:      []string{"http://" + c.ListenPeer},
		AdvertisePeerURLs:   []string{"http://" + c.AdvertisePeer},
		InitialCluster:      c.InitialCluster,
		InitialClusterToken: "baton-faults",
		LogLevel:            "warn",
		LogOutputs:          []string{c.LogPath},
		StartTimeout:        2 * time.Minute,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: member:", err)
		return 1
	}
	fmt.Println("ready")
	select {
	case <-sigc:
	case err := <-s.Err():
		fmt.Fprintln(os.Stderr, "faults: member failed:", err)
	}
	s.Close()
	return 0
}

// member is the parent's handle on one member process and its two proxies.
type member struct {
	cfg         memberConfig
	clientProxy proxy.Server
	peerProxy   proxy.Server
	stderrPath  string

	cmd   *exec.Cmd
	exitc chan error // receives the process's exit once
}

// ClientURL is the member's client URL as clients see it (its proxy).
func (m *member) ClientURL() string { return "http://" + m.cfg.AdvertiseClient }

// start starts the member process and waits until it serves, it exits, or
// the bound passes.
func (m *member) start(bound time.Duration) error {
	b, err := json.Marshal(m.cfg)
	if err != nil {
		return err
	}
	cmd, readyc, err := startChild("member", string(b), m.stderrPath)
	if err != nil {
		return fmt.Errorf("faults: start member %s: %w", m.cfg.Name, err)
	}
	m.cmd = cmd
	m.exitc = make(chan error, 1)
	select {
	case ready := <-readyc:
		if ready {
			go func() { m.exitc <- cmd.Wait() }()
			return nil
		}
		err := cmd.Wait()
		m.exitc <- err
		return fmt.Errorf("faults: member %s exited before it was ready (%v); see %s and %s", m.cfg.Name, err, m.stderrPath, m.cfg.LogPath)
	case <-time.After(bound):
		cmd.Process.Kill()
		go func() { m.exitc <- cmd.Wait() }()
		return fmt.Errorf("faults: member %s not ready after %v; see %s and %s", m.cfg.Name, bound, m.stderrPath, m.cfg.LogPath)
	}
}

// startChild re-executes the test binary in role, with config, its stderr
// appended to stderrPath. readyc receives true when the child prints
// "ready", false when its stdout closes first.
func startChild(role, config, stderrPath string) (*exec.Cmd, <-chan bool, error) {
	errf, err := os.OpenFile(stderrPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer errf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"="+role, configEnv+"="+config)
	cmd.Stdout = w
	cmd.Stderr = errf
	// A child outlives nothing: if the test process dies (a timeout, a
	// kill), so do its members and workers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, nil, err
	}
	w.Close()
	readyc := make(chan bool, 1)
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		readyc <- sc.Scan() && sc.Text() == "ready"
		io.Copy(io.Discard, r)
	}()
	return cmd, readyc, nil
}

func (m *member) signal(sig syscall.Signal) error {
	if m.cmd == nil || m.cmd.Process == nil {
		return errors.New("faults: member not started")
	}
	return m.cmd.Process.Signal(sig)
}

// kill kills the member with SIGKILL and waits for it to exit.
func (m *member) kill() error {
	if err := m.signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-m.exitc
	m.cmd = nil
	return nil
}

// stop ends the member with SIGTERM (SIGKILL after bound) and closes its
// proxies.
func (m *member) stop(bound time.Duration) {
	if m.cmd != nil {
		m.signal(syscall.SIGCONT)
		m.signal(syscall.SIGTERM)
		select {
		case <-m.exitc:
		case <-time.After(bound):
			m.signal(syscall.SIGKILL)
			<-m.exitc
		}
		m.cmd = nil
	}
}

func (m *member) closeProxies() {
	if m.clientProxy != nil {
		m.clientProxy.Close()
	}
	if m.peerProxy != nil {
		m.peerProxy.Close()
	}
}

// blackhole drops all traffic through both of the member's proxies, both
// ways, or lets it through again.
func (m *member) blackhole(on bool) {
	for _, p := range []proxy.Server{m.clientProxy, m.peerProxy} {
		if on {
			p.BlackholeTx()
			p.BlackholeRx()
		} else {
			p.UnblackholeTx()
			p.UnblackholeRx()
		}
	}
}
