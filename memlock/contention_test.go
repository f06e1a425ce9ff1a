package memlock_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/redis/go-redis/v9"

	"github.com/batonhq/baton/memlock"
)

// workerEnv, when set, makes this test binary a contention worker (see
// TestMain); its value is a JSON workerSpec.
const workerEnv = "MEMLOCK_TEST_WORKER"

const (
	workers = 8
	rounds  = 200
)

type workerSpec struct {
	Backend string `json:"backend"` // "memcached" or "redis"
	Addr    string `json:"addr"`
	Dir     string `json:"dir"` // holds the marker and the counter
	ID      string `json:"id"`
	Rounds  int    `json:"rounds"`
}

type workerResult struct {
	Won      int      `json:"won"`
	Busy     int      `json:"busy"`
	Overlaps int      `json:"overlaps"`
	Errors   []string `json:"errors,omitempty"`
}

var errOverlap = errors.New("another f holds the marker")

// Eight processes each try the same lock 200 times. Inside f, a marker file
// created with O_EXCL shows whether another f is inside too, and a counter
// file is read, incremented and written back without any other guard: if
// two f's ever overlapped, a marker would be found or an increment lost.
func TestContentionAcrossProcesses(t *testing.T) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "counter"), []byte("0"), 0o644); err != nil {
				t.Fatal(err)
			}
			type proc struct {
				cmd *exec.Cmd
				out bytes.Buffer
			}
			procs := make([]*proc, workers)
			for i := range procs {
				spec, _ := json.Marshal(workerSpec{Backend: b.name, Addr: b.srv.Addr(), Dir: dir, ID: fmt.Sprintf("worker-%d", i), Rounds: rounds})
				p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
				p.cmd.Env = append(os.Environ(), workerEnv+"="+string(spec))
				p.cmd.Stdout = &p.out
				p.cmd.Stderr = os.Stderr
				if err := p.cmd.Start(); err != nil {
					t.Fatal(err)
				}
				procs[i] = p
			}
			var total workerResult
			for i, p := range procs {
				if err := p.cmd.Wait(); err != nil {
					t.Errorf("worker %d: %v\n%s", i, err, p.out.String())
					continue
				}
				var r workerResult
				if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
					t.Errorf("worker %d output %q: %v", i, p.out.String(), err)
					continue
				}
				if r.Won+r.Busy+len(r.Errors) != rounds {
					t.Errorf("worker %d accounted for %d rounds of %d", i, r.Won+r.Busy+len(r.Errors), rounds)
				}
				total.Won += r.Won
				total.Busy += r.Busy
				total.Overlaps += r.Overlaps
				total.Errors = append(total.Errors, r.Errors...)
			}
			raw, err := os.ReadFile(filepath.Join(dir, "counter"))
			if err != nil {
				t.Fatal(err)
			}
			counter, _ := strconv.Atoi(string(raw))
			t.Logf("%d workers x %d rounds: %d won, %d found the lock busy, counter %d", workers, rounds, total.Won, total.Busy, counter)
			if total.Overlaps != 0 {
				t.Errorf("%d times an f found another f inside", total.Overlaps)
			}
			if len(total.Errors) != 0 {
				t.Errorf("errors other than ErrFailedToLock: %q", total.Errors)
			}
			if counter != total.Won {
				t.Errorf("counter is %d after %d f's: increments were lost to overlapping f's", counter, total.Won)
			}
			if total.Won < workers {
				t.Errorf("only %d of %d rounds won the lock: the test exercised too little", total.Won, workers*rounds)
			}
		})
	}
}

// runWorker is a contention worker's main: it prints its workerResult as
// JSON and returns the exit code.
func runWorker() int {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	var cache memlock.Cache
	switch spec.Backend {
	case "memcached":
		c := memcache.New(spec.Addr)
		defer c.Close()
		cache = memlock.NewMemcache(c)
	case "redis":
		c := redis.NewClient(&redis.Options{Addr: spec.Addr, ContextTimeoutEnabled: true})
		defer c.Close()
		cache = memlock.NewRedis(c)
	default:
		fmt.Fprintln(os.Stderr, "worker: unknown backend", spec.Backend)
		return 2
	}
	l, err := memlock.New(cache)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	marker := filepath.Join(spec.Dir, "marker")
	counter := filepath.Join(spec.Dir, "counter")
	critical := func(context.Context) error {
		m, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, fs.ErrExist) {
			return errOverlap
		}
		if err != nil {
			return err
		}
		m.Close()
		defer os.Remove(marker)
		raw, err := os.ReadFile(counter)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(string(raw))
		if err != nil {
			return err
		}
		return os.WriteFile(counter, []byte(strconv.Itoa(n+1)), 0o644)
	}
	var r workerResult
	for range spec.Rounds {
		err := l.TryWithLock(context.Background(), "contended", spec.ID, critical)
		switch {
		case err == nil:
			r.Won++
		case errors.Is(err, memlock.ErrFailedToLock):
			r.Busy++
		case errors.Is(err, errOverlap):
			r.Won++
			r.Overlaps++
		default:
			r.Errors = append(r.Errors, err.Error())
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 2
	}
	return 0
}
