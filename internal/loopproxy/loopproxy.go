//go:build linux

// Package loopproxy starts etcd's TCP proxy (go.etcd.io/etcd/pkg/v3/proxy)
// on a free port of 127.0.0.1, for tests and the fault suite to put between
// a client and a member, or between members, and cut, delay or drop the
// traffic there.
package loopproxy

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.etcd.io/etcd/pkg/v3/proxy"
	"go.uber.org/zap"
)

// proxyMu serializes New: it finds the new proxy's port by comparing
// this process's listening sockets before and after.
var proxyMu sync.Mutex

// New starts an etcd proxy server that listens on a free port of
// 127.0.0.1 and forwards to the loopback address to ("127.0.0.1:port").
//
// etcd's proxy listens on ":port" (every interface) when given a port; only
// for a From without a port number does it listen on From.Host as given.
// So it is given "127.0.0.1:0", and the port the kernel chose is read back
// from /proc: the one listening socket of this process that is new.
func New(to string) (proxy.Server, string, error) {
	proxyMu.Lock()
	defer proxyMu.Unlock()
	before, err := ownListenPorts()
	if err != nil {
		return nil, "", err
	}
	s := proxy.NewServer(proxy.ServerConfig{
		Logger: zap.NewNop(),
		From:   url.URL{Scheme: "tcp", Host: "127.0.0.1:0"},
		To:     url.URL{Scheme: "tcp", Host: to},
	})
	select {
	case err := <-s.Error():
		s.Close()
		return nil, "", fmt.Errorf("loopproxy: proxy to %s: %w", to, err)
	default:
	}
	// The proxy reports every failed dial and copy on a channel of 16 and
	// blocks its accept loop when the channel is full: with a member down
	// for a few seconds, clients' reconnects fill it, and the proxy then
	// accepts connections it never serves. Drain it for the proxy's life.
	go func() {
		for {
			select {
			case <-s.Error():
			case <-s.Done():
				return
			}
		}
	}()
	after, err := ownListenPorts()
	if err != nil {
		s.Close()
		return nil, "", err
	}
	var ports []int
	for p := range after {
		if !before[p] {
			ports = append(ports, p)
		}
	}
	if len(ports) != 1 {
		s.Close()
		return nil, "", fmt.Errorf("loopproxy: proxy to %s: found %d new listening ports, want 1", to, len(ports))
	}
	return s, fmt.Sprintf("127.0.0.1:%d", ports[0]), nil
}

// ownListenPorts returns the ports of this process's TCP sockets that listen
// on 127.0.0.1 (Linux only).
func ownListenPorts() (map[int]bool, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("loopproxy: list fds: %w", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	f, err := os.Open("/proc/self/net/tcp")
	if err != nil {
		return nil, fmt.Errorf("loopproxy: read sockets: %w", err)
	}
	defer f.Close()
	ports := map[int]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] {
			continue
		}
		host, port, ok := strings.Cut(fs[1], ":")
		if !ok || host != "0100007F" {
			continue
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err == nil {
			ports[int(p)] = true
		}
	}
	return ports, sc.Err()
}
