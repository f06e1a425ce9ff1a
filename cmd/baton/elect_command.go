package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/batonhq/baton/concurrency"
)

// electOptions are the flags and arguments of "baton elect".
type electOptions struct {
	*app
	name     string
	proposal string
	argv     []string

	listen     bool
	json       bool
	ttl        time.Duration
	timeout    time.Duration
	killGrace  time.Duration
	trust      fractionValue
	note       string
	recampaign bool
}

func newElectCommand(a *app) *cobra.Command {
	o := &electOptions{app: a}
	cmd := &cobra.Command{
		Use:   "elect NAME [PROPOSAL] [-- CMD [ARGS...]]",
		Short: "Campaign to lead NAME and run CMD only while leader, or watch the leader with --listen",
		Long: `elect campaigns in the election NAME with the value PROPOSAL, the same
election as etcdctl elect's and etcd's Election. Once leader it runs CMD,
resigns when CMD exits, and exits with CMD's exit code. Without CMD it
prints the leader key and token and leads until interrupted.

elect runs on the library's LeaderElector, with this process's identity,
--ttl and --lease-trust: the command and the library share one lifecycle.

CMD gets BATON_ELECTION_KEY, BATON_FENCING_TOKEN and BATON_PROPOSAL. If
leadership is lost while CMD runs, CMD is stopped as in lock (SIGTERM, then
SIGKILL after --kill-grace) and baton exits 71. The same happens earlier,
when no keep-alive has been answered for --lease-trust of the TTL (default
2/3: 6.7s of 10s): the server may be expiring the lease already, and CMD
should stop before the next leader starts. --lease-trust is the elector's
RenewDeadline (trust x TTL), which must be more than a third of the TTL
(a keep-alive goes out every third): 1/3 or less is a usage error, and 1
is taken as a millisecond less than the TTL, the most the elector allows,
so that CMD stops when the client deems the lease expired. A --ttl under
2s is raised to 2s, etcd's minimum, as the server would raise it.

--recampaign stays in the race after a loss: CMD is stopped as above, and
only once it has exited (with whatever it left running) does baton
campaign again, running CMD anew, with a new token, each time it leads;
two CMDs of one baton never run at once. baton then exits only when CMD
exits by itself (with CMD's code, after resigning), on an interrupt while
it waits (128+N), after --timeout of one wait (72, each wait has its own),
or when it is interrupted while CMD stops after a loss (71). A server that
stops answering does not end it: it campaigns again when the server is
back. Without --recampaign, a candidate whose server stops answering for a
TTL while it waits exits 69.

Without PROPOSAL the value is baton's identity of this process (host, pid,
--note, since when), which status and --listen show; with one, the value is
PROPOSAL exactly, as other etcd clients expect.

--listen does not campaign: it prints the leader each time it changes,
"no leader" included, one line each (JSON lines with --json).`,
		Example: `  baton elect scheduler -- ./scheduler
  baton elect --recampaign --note "$(hostname)" scheduler -- ./scheduler
  baton elect web 10.0.0.5:8080 -- ./serve --port 8080
  baton elect --listen web
  baton elect --listen --json web`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("missing NAME: baton elect NAME [PROPOSAL] [-- CMD ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			pre := args
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				pre, o.argv = args[:dash], args[dash:]
			}
			switch len(pre) {
			case 0:
				return usageErrorf("NAME goes before --: baton elect NAME [PROPOSAL] -- CMD")
			case 1:
				o.name = pre[0]
			case 2:
				o.name, o.proposal = pre[0], pre[1]
			default:
				return usageErrorf("too many arguments before CMD: baton elect NAME [PROPOSAL] -- CMD")
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.listen, "listen", "l", false, "print every change of leader instead of campaigning")
	f.BoolVar(&o.json, "json", false, "with --listen, print JSON lines")
	durationFlag(f, &o.ttl, "ttl", defaultTTL, "lease TTL: how long leadership outlives a baton that stops renewing it (rounded up to seconds; at least 2s)")
	durationFlag(f, &o.timeout, "timeout", 0, "give up campaigning after this long (exit 72); 0 waits forever")
	durationFlag(f, &o.killGrace, "kill-grace", defaultKillGrace, "on leadership loss, time between SIGTERM and SIGKILL to CMD; 0 kills at once")
	o.trust = defaultLeaseTrust
	f.Var(&o.trust, "lease-trust", leaseTrustUsage)
	f.StringVar(&o.note, "note", "", "a note about this candidate, shown by status and --listen")
	f.BoolVar(&o.recampaign, "recampaign", false, "after a loss, stop CMD and campaign again, running CMD anew each time it leads")
	return cmd
}

func (o *electOptions) run(ctx context.Context) error {
	var renew time.Duration
	p, end, err := o.begin(ctx, o.name, o.ttl, o.timeout, o.killGrace, func(ttl int) (int, error) {
		switch {
		case o.listen && (o.proposal != "" || len(o.argv) > 0):
			return 0, usageErrorf("--listen takes only NAME")
		case o.json && !o.listen:
			return 0, usageErrorf("--json goes with --listen")
		case o.recampaign && o.listen:
			return 0, usageErrorf("--recampaign goes with campaigning, not with --listen")
		}
		ttl = max(ttl, int(concurrency.MinElectorTTL/time.Second)) // as the server would raise it
		if o.listen {
			return ttl, nil
		}
		var err error
		renew, err = renewDeadline(ttl, float64(o.trust))
		return ttl, err
	})
	if err != nil {
		return err
	}
	defer end()
	if o.listen {
		s, err := concurrency.NewSession(p.c, concurrency.WithTTL(p.ttl), concurrency.WithLogger(o.log))
		if err != nil {
			return fmt.Errorf("elect %s: %w", o.name, err)
		}
		defer s.Close()
		return o.runListen(concurrency.NewElection(s, o.name), p.sigs)
	}
	return o.campaign(p.c, p.closeClient, p.ttl, renew, p.sigs)
}

// renewDeadline is the elector's RenewDeadline for --lease-trust: the
// fraction of the TTL, which the elector takes in (TTL/3, TTL). A fraction
// of 1/3 or less is refused: a keep-alive goes out a third of the TTL after
// the last answer, so the leader would step down between two. 1 becomes a
// millisecond less than the TTL, the most the elector takes: CMD stops
// when the client deems the lease expired.
func renewDeadline(ttlSeconds int, trust float64) (time.Duration, error) {
	ttl := time.Duration(ttlSeconds) * time.Second
	d := time.Duration(trust * float64(ttl))
	if d <= ttl/3 {
		return 0, usageErrorf("--lease-trust for elect must be more than 1/3 (a keep-alive goes out every third of the TTL), got %v", strconv.FormatFloat(trust, 'g', 3, 64))
	}
	return min(d, ttl-time.Millisecond), nil
}

// leaderLine is one line of --listen --json.
type leaderLine struct {
	Rev int64 `json:"rev"`
	// Change is what the line reports: "leader" (a new leader, handoffs
	// included), "no leader", or "value" (the same leader proclaimed a
	// new value).
	Change string      `json:"change"`
	Leader *leaderJSON `json:"leader"`
}

type leaderJSON struct {
	Key    string    `json:"key"`
	Value  string    `json:"value"`
	Token  int64     `json:"token"`
	Lease  string    `json:"lease"`
	Holder *identity `json:"holder,omitempty"`
}

// Kinds of --listen lines.
const (
	changeLeader  = "leader"
	changeNone    = "no leader"
	changeValue   = "value"
	changeUnshown = ""
)

// leaderChange says what cur is after prev, for --listen: text and JSON
// print the same lines, decided here. A baton leader's first update, which
// only records since when it leads, is not a change: it must not read as
// a second leader.
func leaderChange(first bool, prev, cur *mvccpb.KeyValue) string {
	switch {
	case cur == nil && (first || prev != nil):
		return changeNone
	case cur == nil:
		return changeUnshown
	case first || prev == nil || string(prev.Key) != string(cur.Key) || prev.CreateRevision != cur.CreateRevision:
		return changeLeader
	case sameValue(prev.Value, cur.Value):
		return changeUnshown
	}
	return changeValue
}

// sameValue: equal, or baton identities that differ only in Acquired.
func sameValue(a, b []byte) bool {
	if string(a) == string(b) {
		return true
	}
	ia, oka := parseIdentity(a)
	ib, okb := parseIdentity(b)
	if !oka || !okb {
		return false
	}
	ia.Acquired, ib.Acquired = time.Time{}, time.Time{}
	return ia == ib
}

// runListen prints the leader of e at each change until interrupted.
func (o *electOptions) runListen(e *concurrency.Election, sigs <-chan os.Signal) error {
	// Read once first: the observer retries a failing watch forever, so a
	// user who may not read NAME would wait in silence.
	rctx, rcancel := context.WithTimeout(context.Background(), o.dialTimeout)
	_, err := e.Leader(rctx)
	rcancel()
	if err != nil && !errors.Is(err, concurrency.ErrElectionNoLeader) {
		return fmt.Errorf("listen %s: %w", o.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := e.Events(ctx)
	defer func() {
		cancel()
		for range events { // let the observer end before the client closes
		}
	}()
	var prev *mvccpb.KeyValue
	first := true
	for {
		select {
		case <-sigs:
			return nil
		case ev, ok := <-events:
			if !ok {
				return errors.New("listen: the watch on the election ended (the client closed)")
			}
			change := leaderChange(first, prev, ev.Leader)
			first, prev = false, ev.Leader
			if change == changeUnshown {
				continue
			}
			if !o.json {
				fmt.Fprintln(o.io.Out, o.leaderText(change, ev.Leader))
				continue
			}
			b, err := o.leaderJSON(change, ev)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.io.Out, "%s\n", b)
		}
	}
}

func (o *electOptions) leaderText(change string, kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "no leader"
	}
	label := "leader"
	if change == changeValue {
		label = "leader's new value"
	}
	return fmt.Sprintf("%s: %s, token %d, key %s%s", label, holderOf(kv), kv.CreateRevision, o.prefix, kv.Key)
}

func (o *electOptions) leaderJSON(change string, ev concurrency.LeaderEvent) ([]byte, error) {
	l := leaderLine{Rev: ev.Rev, Change: change}
	if kv := ev.Leader; kv != nil {
		l.Leader = &leaderJSON{
			Key:   o.prefix + string(kv.Key),
			Value: string(kv.Value),
			Token: kv.CreateRevision,
			Lease: strconv.FormatInt(kv.Lease, 16),
		}
		if id, ok := parseIdentity(kv.Value); ok {
			l.Leader.Holder = &id
		}
	}
	return json.Marshal(l)
}
