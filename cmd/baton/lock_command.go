package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
)

// lockOptions are the flags and arguments of "baton lock".
type lockOptions struct {
	*app
	name string
	argv []string // CMD and its arguments; empty: hold until interrupted

	ttl       time.Duration
	timeout   time.Duration
	killGrace time.Duration
	trust     fractionValue
	try       bool
	note      string
}

// Defaults of lock and elect.
const (
	defaultTTL       = 10 * time.Second
	defaultKillGrace = 5 * time.Second
	releaseTimeout   = 5 * time.Second
)

func newLockCommand(a *app) *cobra.Command {
	o := &lockOptions{app: a}
	cmd := &cobra.Command{
		Use:   "lock NAME [-- CMD [ARGS...]]",
		Short: "Run CMD while holding the lock NAME, or hold it until interrupted",
		Long: `lock acquires the distributed lock NAME, runs CMD, releases the lock and
exits with CMD's exit code. The lock is the same as etcdctl lock's and etcd's
Mutex: they exclude each other.

CMD gets BATON_LOCK_KEY and BATON_FENCING_TOKEN in its environment, and
ETCD_LOCK_KEY and ETCD_LOCK_REV as etcdctl sets them. Both numbers grow
with every acquisition: pass one to what the lock protects, which should
refuse a number lower than one it has seen. BATON_FENCING_TOKEN is the
create revision of the holder's key (what status shows); ETCD_LOCK_REV is
the revision at which the lock was acquired, as etcdctl gives it. When
etcdctl lock and baton lock share a lock, use ETCD_LOCK_REV: etcdctl
holders have no other number, and the two kinds do not compare.

If the lock is lost while CMD runs (the session expired, someone deleted
the key), CMD gets SIGTERM, then SIGKILL after --kill-grace, and baton exits
71. The same happens earlier, when no keep-alive has been answered for
--lease-trust of the TTL (default 2/3: 6.7s of 10s): the server may be
expiring the lease already, and CMD should stop before the next holder
starts. After a loss baton exits at once, without waiting on a server it
cannot reach. SIGINT, SIGTERM and SIGHUP are passed on to CMD; the lock is released when CMD
exits, after whatever CMD left running is killed. CMD runs in its own
process group and must not read the terminal. On Linux CMD runs under a
small supervisor: if baton itself is killed (kill -9 included), every
process CMD started gets SIGKILL at once, so none runs on after the lease
expires.

While it waits, lock says on stderr who holds the lock, for how long, and
how long it has waited. Without CMD it prints the key and the token and
holds the lock until interrupted.`,
		Example: `  baton lock nightly-backup -- ./backup.sh
  baton lock --try --note "migration v42" db-migrate -- ./migrate up
  baton lock --timeout 30s deploy -- sh -c 'echo "token $BATON_FENCING_TOKEN"'`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("missing NAME: baton lock NAME [-- CMD ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() == 0 {
				return usageErrorf("NAME goes before --: baton lock NAME -- CMD")
			}
			o.name, o.argv = args[0], args[1:]
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	durationFlag(f, &o.ttl, "ttl", defaultTTL, "lease TTL: how long the lock outlives a baton that stops renewing it (rounded up to seconds)")
	durationFlag(f, &o.timeout, "timeout", 0, "give up waiting after this long (exit 72); 0 waits forever")
	durationFlag(f, &o.killGrace, "kill-grace", defaultKillGrace, "on lock loss, time between SIGTERM and SIGKILL to CMD; 0 kills at once")
	o.trust = defaultLeaseTrust
	f.Var(&o.trust, "lease-trust", leaseTrustUsage)
	f.BoolVar(&o.try, "try", false, "fail at once (exit 75) if the lock is held or waited for")
	f.StringVar(&o.note, "note", "", "a note about this holder, shown by status and by waiters")
	return cmd
}

func (o *lockOptions) run(ctx context.Context) error {
	p, end, err := o.begin(ctx, o.name, o.ttl, o.timeout, o.killGrace, func(ttl int) (int, error) {
		if o.try && o.timeout > 0 {
			return 0, usageErrorf("--try and --timeout exclude each other")
		}
		return ttl, nil
	})
	if err != nil {
		return err
	}
	defer end()
	c, sigs, ttl := p.c, p.sigs, p.ttl
	s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl), concurrency.WithLeaseTrust(float64(o.trust)), concurrency.WithLogger(o.log))
	if err != nil {
		return fmt.Errorf("lock %s: %w", o.name, err)
	}
	// Closing the session revokes its lease, which deletes our key if
	// anything is left: after a timeout, an interrupt, or an error.
	var lostHold bool
	defer func() { endSession(s, lostHold) }()

	what := "lock " + o.name
	id := newIdentity(kindLock, o.note)
	m := concurrency.NewMutex(s, o.name, concurrency.WithMutexValue(id.encode()))
	if o.try {
		err := m.TryLock(ctx)
		if errors.Is(err, concurrency.ErrLocked) {
			return withCode(exitHeld, fmt.Errorf("%s is taken%s", what, o.holderNote(c, o.name)))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	} else if err := o.acquire(c, s, o.name, what, o.timeout, sigs, m.Lock); err != nil {
		return err
	}

	// Say since when we hold it. The put keeps the key's create
	// revision, so the token and the queue order do not change.
	id.Acquired = time.Now().UTC()
	pctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	_, err = m.Guard(pctx, clientv3.OpPut(m.Key(), id.encode(), clientv3.WithIgnoreLease()))
	cancel()
	if errors.Is(err, concurrency.ErrLockLost) {
		return withCode(exitLost, fmt.Errorf("%s lost right after it was acquired", what))
	}
	if err != nil {
		fmt.Fprintf(o.io.Err, "baton: %s: could not record the acquisition time: %v\n", what, err)
	}

	h := held{what: what, s: s, key: o.prefix + m.Key(), token: m.Rev()}
	o.log.Info("lock acquired", "name", o.name, "key", h.key, "token", h.token, "lease", fmt.Sprintf("%x", int64(s.Lease())))
	token := strconv.FormatInt(h.token, 10)
	vars := []string{"BATON_LOCK_KEY=" + h.key, "BATON_FENCING_TOKEN=" + token}
	// ETCD_LOCK_REV means what etcdctl's means: the revision of the
	// answer that found the lock ours. It and the fencing token both grow
	// with every acquisition, but they are not comparable with each other:
	// a resource that sees both kinds of holder must be given one kind.
	rev := strconv.FormatInt(m.Header().Revision, 10)
	etcdVars := []string{"ETCD_LOCK_KEY=" + h.key, "ETCD_LOCK_REV=" + rev}
	idle := fmt.Sprintf("holding %s (token %s) until interrupted", what, token)
	lost, herr := o.holdWhile(m.HoldContext, h, o.argv, vars, etcdVars, idle, sigs, o.killGrace)
	if lost {
		lostHold = true
		return herr
	}

	uctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	switch uerr := m.Unlock(uctx); {
	case errors.Is(uerr, concurrency.ErrLockLost):
		// The key was gone before we released it: the loss may have come
		// while CMD still ran, so the run was not exclusive to the end.
		return withCode(exitLost, fmt.Errorf("%s was lost before it was released", what))
	case uerr != nil:
		fmt.Fprintf(o.io.Err, "baton: releasing %s: %v (it is released when the lease ends, within %ds)\n", what, uerr, ttl)
	default:
		o.log.Info("lock released", "name", o.name, "key", h.key, "token", h.token)
	}
	return herr
}
