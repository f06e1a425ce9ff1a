package main

// This file runs baton elect's campaign on concurrency.LeaderElector, so
// that the command and the library share one lifecycle: the elector
// campaigns, leads and campaigns again; elect shows who is in the way,
// runs CMD for each term and decides when baton exits.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/layout"
)

// term is one term of leadership, handed by OnStartedLeading to the
// campaign loop, which closes done when it is through with it: only then
// does OnStartedLeading return, so the elector starts no campaign, and no
// other term, while CMD runs.
type term struct {
	ctx  context.Context // ends with the term
	l    *concurrency.Leadership
	done chan struct{}
}

// campaign campaigns for NAME until baton exits, as described by elect's
// help. closeClient closes c, for an end that must not wait on the
// elector's requests to an unreachable server.
func (o *electOptions) campaign(c *clientv3.Client, closeClient func() error, ttl int, renew time.Duration, sigs <-chan os.Signal) error {
	what := "leadership of " + o.name
	proposal, id := o.proposal, newIdentity(kindElection, o.note)
	ownValue := proposal == ""
	if ownValue {
		proposal = id.encode()
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	terms := make(chan *term)
	changed := make(chan struct{}, 1) // a leader change since the last read
	le, err := concurrency.NewLeaderElector(concurrency.LeaderElectionConfig{
		Client:        c,
		Prefix:        o.name,
		Identity:      proposal,
		TTL:           time.Duration(ttl) * time.Second,
		RenewDeadline: renew,
		// elect resigns when CMD exits by ending Run; the elector resigns
		// after OnStartedLeading returned, and revokes the lease.
		ReleaseOnCancel: true,
		StopOnLoss:      !o.recampaign,
		Logger:          o.log,
		Callbacks: concurrency.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context, l *concurrency.Leadership) {
				t := &term{ctx: ctx, l: l, done: make(chan struct{})}
				select {
				case terms <- t:
					<-t.done
				case <-runCtx.Done(): // baton is leaving before it took the term
				}
			},
			OnNewLeader: func(string) {
				select {
				case changed <- struct{}{}:
				default: // one pending read covers every change
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("elect %s: %w", o.name, err)
	}
	runDone := make(chan struct{})
	var runErr error
	go func() {
		defer close(runDone)
		runErr = le.Run(runCtx)
	}()
	// end ends Run and returns err. Run gets grace to clean up (resign,
	// revoke); then the client closes under it, which ends its requests at
	// once. It reports whether Run ended within grace.
	end := func(grace time.Duration) bool {
		stopRun()
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-runDone:
			return true
		case <-t.C:
			closeClient()
			<-runDone
			return false
		}
	}

	for {
		t, err := o.waitTerm(c, what, proposal, time.Duration(ttl)*time.Second, terms, changed, runDone, func() error { return runErr }, sigs)
		if err != nil {
			grace := releaseTimeout
			if exitCode(err) == exitUnavailable {
				grace = lostRevokeTimeout
			}
			end(grace)
			return err
		}
		lost, err := o.lead(t, id, ownValue, sigs)
		switch {
		case lost && o.recampaign && errors.Is(err, errTermLost) && !errors.As(err, new(signalledError)):
			fmt.Fprintf(o.io.Err, "baton: %v; campaigning again\n", err)
			close(t.done)
			continue
		case lost:
			// Exit promptly: the server may be out of reach, which may
			// be why leadership was lost.
			close(t.done)
			end(lostRevokeTimeout)
			return err
		}
		// CMD is done (or an interrupt came without CMD): end Run before
		// the term, so that the elector resigns instead of leading on.
		stopRun()
		close(t.done)
		if !end(releaseTimeout) {
			fmt.Fprintf(o.io.Err, "baton: resigning %s: no answer within %v (leadership ends with the lease, within %ds)\n", o.name, releaseTimeout, ttl)
		} else if o.stillLeads(c, t.l) {
			fmt.Fprintf(o.io.Err, "baton: resigning %s: the leader key is still there (leadership ends with the lease, within %ds)\n", o.name, ttl)
		}
		return err
	}
}

// errTermLost marks the error of a term lost under CMD (or under an idle
// leader), after which --recampaign campaigns again.
var errTermLost = errors.New("term lost")

// termLost is errTermLost with the message of the loss err (exit 71).
type termLost struct{ err error }

func (e termLost) Error() string        { return e.err.Error() }
func (e termLost) Unwrap() error        { return e.err }
func (e termLost) Is(target error) bool { return target == errTermLost }

// waitTerm shows who leads until the elector hands over a term, and ends
// the wait on an interrupt (128+N), --timeout (72), a server that did not
// answer for a TTL without --recampaign (69), or Run's own end.
func (o *electOptions) waitTerm(c *clientv3.Client, what, own string, ttl time.Duration, terms <-chan *term, changed <-chan struct{}, runDone <-chan struct{}, runErr func() error, sigs <-chan os.Signal) (*term, error) {
	ownKey := func(kv *mvccpb.KeyValue) bool { return string(kv.Value) == own }
	p := followProgress(o.app, what, ownKey, func(ctx context.Context) <-chan concurrency.LeaderEvent {
		return leaderEvents(ctx, c, o.name, changed)
	})
	var timeout <-chan time.Time
	if o.timeout > 0 {
		tm := time.NewTimer(o.timeout)
		defer tm.Stop()
		timeout = tm.C
	}
	var gone <-chan struct{}
	if !o.recampaign {
		ctx, cancel := context.WithCancel(context.Background())
		g, stopped := o.unanswered(ctx, c, ttl)
		defer func() { cancel(); <-stopped }()
		gone = g
	}
	var (
		t        *term
		sig      os.Signal
		timedOut bool
		isGone   bool
		ended    bool
	)
	select {
	case t = <-terms:
	case sig = <-sigs:
	case <-timeout:
		timedOut = true
	case <-gone:
		isGone = true
	case <-runDone:
		ended = true
	}
	shown := p.stop()
	switch {
	case sig != nil:
		return nil, withCode(exitCodeOf(sig), fmt.Errorf("interrupted (%v) while waiting for %s", sig, what))
	case timedOut:
		return nil, withCode(exitTimeout, fmt.Errorf("timed out after %v waiting for %s%s", o.timeout, what, o.holderNote(c, o.name)))
	case isGone:
		return nil, placeLost(c, what)
	case ended:
		return nil, fmt.Errorf("%s: %w", what, runErr())
	}
	if shown {
		fmt.Fprintf(o.io.Err, "baton: got %s after waiting %s\n", what, human(p.waited()))
	}
	return t, nil
}

// leaderEvents reads the leader of NAME (the key under NAME/ with the
// lowest create revision) at once and after each signal on changed, which
// the elector's OnNewLeader sends, until ctx ends; then it closes the
// channel. A failed read waits for the next change.
func leaderEvents(ctx context.Context, c *clientv3.Client, name string, changed <-chan struct{}) <-chan concurrency.LeaderEvent {
	ch := make(chan concurrency.LeaderEvent)
	go func() {
		defer close(ch)
		for {
			r, err := c.Get(ctx, layout.Dir(name), clientv3.WithFirstCreate()...)
			if err == nil {
				ev := concurrency.LeaderEvent{Rev: r.Header.Revision}
				if len(r.Kvs) > 0 {
					ev.Leader = r.Kvs[0]
				}
				select {
				case ch <- ev:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// unanswered closes gone once no endpoint of c has answered for ttl,
// asking every third of it, until ctx ends; stopped closes when it is
// done. By then a candidate's lease has expired on the server, unless a
// new raft leader renewed it, and the place in the queue with it.
func (a *app) unanswered(ctx context.Context, c *clientv3.Client, ttl time.Duration) (gone, stopped <-chan struct{}) {
	g, s := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s)
		last := time.Now()
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if a.answers(ctx, c) {
				last = time.Now()
			} else if ctx.Err() == nil && time.Since(last) >= ttl {
				close(g)
				return
			}
		}
	}()
	return g, s
}

// lead runs one term: it records since when it leads (baton's own value),
// runs CMD or waits for an interrupt, and says how the term ended. lost
// (exit 71) is a loss, wrapping errTermLost when it came under CMD or an
// idle leader: --recampaign campaigns again after those. Otherwise err is
// CMD's exit, and elect resigns.
func (o *electOptions) lead(t *term, id identity, ownValue bool, sigs <-chan os.Signal) (lost bool, err error) {
	what := "leadership of " + o.name
	wonLost := termLost{withCode(exitLost, fmt.Errorf("%s lost right after it was won", what))}
	if t.ctx.Err() != nil {
		return true, wonLost
	}
	value := ""
	if ownValue {
		// Say since when we lead; the put keeps the create revision.
		id.Acquired = time.Now().UTC()
		value = id.encode()
		pctx, cancel := context.WithTimeout(t.ctx, releaseTimeout)
		_, err := t.l.Guard(pctx, clientv3.OpPut(t.l.Key(), value, clientv3.WithIgnoreLease()))
		cancel()
		switch {
		case errors.Is(err, concurrency.ErrLeadershipLost) || t.ctx.Err() != nil:
			return true, wonLost
		case err != nil:
			fmt.Fprintf(o.io.Err, "baton: %s: could not record the time: %v\n", what, err)
		}
	} else {
		value = o.proposal
	}
	h := held{what: what, s: t.l.Session(), key: o.prefix + t.l.Key(), token: t.l.Rev()}
	token := strconv.FormatInt(h.token, 10)
	fmt.Fprintf(o.io.Err, "baton: leading %s (token %s)\n", o.name, token)
	vars := []string{"BATON_ELECTION_KEY=" + h.key, "BATON_FENCING_TOKEN=" + token}
	hold := func(context.Context) (context.Context, context.CancelFunc) { return context.WithCancel(t.ctx) }
	lost, herr := o.holdWhile(hold, h, o.argv, vars, []string{"BATON_PROPOSAL=" + value}, "", sigs, o.killGrace)
	if lost {
		return true, termLost{herr}
	}
	// The elector's Resign deletes the key only if it is still ours and
	// does not say which; Guard with no operations does.
	rctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if _, gerr := t.l.Guard(rctx); errors.Is(gerr, concurrency.ErrLeadershipLost) {
		return true, withCode(exitLost, fmt.Errorf("%s was lost before resigning", what))
	}
	return false, herr
}

// stillLeads reports whether the key of l is still there after the
// elector resigned (its resign and revoke failed): then the leadership
// ends with the lease.
func (o *electOptions) stillLeads(c *clientv3.Client, l *concurrency.Leadership) bool {
	ctx, cancel := context.WithTimeout(context.Background(), lostRevokeTimeout)
	defer cancel()
	r, err := c.Get(ctx, l.Key())
	return err == nil && len(r.Kvs) == 1 && r.Kvs[0].CreateRevision == l.Rev()
}
