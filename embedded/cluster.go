package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Cluster is a set of embedded members that form one etcd cluster in this
// process. Members can be stopped and restarted to inject faults.
type Cluster struct {
	Members []*Server
	root    string
}

// StartCluster starts n members (n >= 1) on free loopback ports, each in its
// own directory under a new temporary root, and waits for all of them.
// base supplies the settings shared by all members; its Name, Dir, URLs and
// InitialCluster are ignored.
func StartCluster(n int, base Config) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("embedded: cluster size %d, want at least 1", n)
	}
	root, err := os.MkdirTemp("", "baton-cluster-")
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	ports, err := FreePorts(2 * n)
	if err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	cfgs := make([]Config, n)
	var initial []string
	for i := range n {
		c := base
		c.Name = fmt.Sprintf("m%d", i)
		c.Dir = filepath.Join(root, c.Name)
		c.ListenClientURLs = []string{loopbackURL(ports[2*i])}
		c.AdvertiseClientURLs = nil
		c.ListenPeerURLs = []string{loopbackURL(ports[2*i+1])}
		c.AdvertisePeerURLs = nil
		cfgs[i] = c
		initial = append(initial, c.Name+"="+loopbackURL(ports[2*i+1]))
	}
	cl := &Cluster{Members: make([]*Server, n), root: root}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl.Members[i], errs[i] = Start(cfgs[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// Endpoints returns the client URLs of all members, running or not.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Endpoints()...)
	}
	return eps
}

// Leader returns the index of the member that is raft leader, or -1 when no
// running member knows one.
func (c *Cluster) Leader() int {
	for _, m := range c.Members {
		e := m.Etcd()
		if e == nil {
			continue
		}
		lead := uint64(e.Server.Leader())
		if lead == 0 {
			continue
		}
		for j, o := range c.Members {
			if oe := o.Etcd(); oe != nil && uint64(oe.Server.MemberID()) == lead {
				return j
			}
		}
	}
	return -1
}

// Close stops every member and removes the cluster's directory.
func (c *Cluster) Close() error {
	var errs []error
	for _, m := range c.Members {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	errs = append(errs, os.RemoveAll(c.root))
	return errors.Join(errs...)
}
