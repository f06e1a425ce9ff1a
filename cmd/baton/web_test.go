package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// startWeb runs "baton web" in-process on a free port and returns its URL.
func startWeb(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	r := startInProcess(env, false, append([]string{"web", "--listen", "127.0.0.1:0"}, args...)...)
	t.Cleanup(func() {
		r.sigs <- syscall.SIGTERM
		if code := <-r.code; code != 0 {
			t.Errorf("web exit %d: %s", code, r.err.String())
		}
	})
	r.out.waitCount(t, "serving http://", 1, 30*time.Second)
	m := regexp.MustCompile(`http://[^ ]+/`).FindString(r.out.String())
	if m == "" {
		t.Fatalf("web printed no URL: %q", r.out.String())
	}
	return m
}

// browser starts headless Chromium (Debian's chromium package) for the
// test. With CI set a missing chromium fails the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := testutil.RequireBinary(t, "chromium", "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.DisableGPU,
		chromedp.WindowSize(1100, 640),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Start the browser now: a broken install fails here. The first call
	// must not have a deadline of its own (it would end the browser with
	// it), so it is bounded from outside.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.Navigate("about:blank")) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("chromium did not start within 60s: %v", <-started)
	}
	return ctx
}

// waitDOM waits until the JavaScript expression cond is true on the page,
// for at most d: it polls the DOM on every animation frame, it does not
// sleep.
func waitDOM(t *testing.T, ctx context.Context, d time.Duration, what, cond string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	begin := time.Now()
	for {
		_, err := chromedp.Run(wctx, chromedp.Poll[bool](cond))
		if err == nil {
			break
		}
		if wctx.Err() == nil && staleJSContext(err) {
			// chromedp learns of a new page's JavaScript context from an
			// event that may arrive after Navigate has returned; until it
			// does, Poll runs in the old page's context, which is gone.
			// Poll again once the event has had a moment to arrive.
			select {
			case <-wctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		defer tcancel()
		page, _ := chromedp.Run(tctx, chromedp.Text("main"))
		t.Fatalf("the page did not show %s within %v: %v\npage:\n%s", what, d, err, page)
	}
	t.Logf("the page showed %s after %v", what, time.Since(begin).Round(time.Millisecond))
}

// staleJSContext reports whether err is the browser refusing a script
// because the JavaScript context it was sent to no longer exists: the page
// was replaced (by a navigation) under chromedp's feet.
func staleJSContext(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Cannot find context with specified id") ||
		strings.Contains(msg, "Execution context was destroyed")
}

// card is a JavaScript expression for the card of primitive id.
func card(id string) string {
	return fmt.Sprintf("document.querySelector('section.prim[data-id=%q]')", id)
}

// TestWebPage drives the page in a real browser: a lock taken with
// "baton lock" shows its holder within 2 s, a handoff grows the lock's
// timeline, an election that changes leader is followed; /metrics says the
// same. It takes a screenshot (written to docs/web.png with
// BATON_WRITE_SCREENSHOT=1).
func TestWebPage(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	env := map[string]string{"BATON_ENDPOINTS": strings.Join(srv.Endpoints(), ",")}
	url := startWeb(t, env)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 10*time.Second, "that it is live", `document.getElementById("conn").textContent === "live"`)

	// 1. A lock taken with baton lock: its holder within 2 s.
	pid := fmt.Sprintf("pid %d", os.Getpid())
	first := startInProcess(env, false, "lock", "--note", "nightly backup", "demo")
	first.out.waitCount(t, "BATON_FENCING_TOKEN=", 1, 30*time.Second)
	waitDOM(t, ctx, 2*time.Second, "the holder of demo",
		card("lock demo")+`?.querySelector(".summary")?.textContent.includes(`+fmt.Sprintf("%q", pid+" (nightly backup)")+`)`)

	// 2. Hand it off to a waiter: the waiter shows in line, then holds,
	//    and the timeline has both holders.
	second := startInProcess(env, false, "lock", "--note", "second", "demo")
	second.err.waitCount(t, "waiting for lock demo", 1, 30*time.Second)
	waitDOM(t, ctx, 2*time.Second, "the waiter of demo", card("lock demo")+`?.querySelectorAll(".field-waiters li").length === 1`)
	first.sigs <- syscall.SIGTERM
	if code := <-first.code; code != 0 {
		t.Fatalf("first holder exit %d: %s", code, first.err.String())
	}
	second.out.waitCount(t, "BATON_FENCING_TOKEN=", 1, 30*time.Second)
	waitDOM(t, ctx, 2*time.Second, "the handoff on demo's timeline",
		card("lock demo")+`?.querySelectorAll(".timeline li").length === 2 && `+
			card("lock demo")+`.querySelector(".summary").textContent.includes("(second)")`)
	defer func() {
		second.sigs <- syscall.SIGTERM
		if code := <-second.code; code != 0 {
			t.Errorf("second holder exit %d: %s", code, second.err.String())
		}
	}()

	// 3. An election changes leader: the page follows.
	s1, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ectx := ctxT(t, 60*time.Second)
	e1, e2 := concurrency.NewElection(s1, "sched"), concurrency.NewElection(s2, "sched")
	if err := e1.Campaign(ectx, "alpha:8080"); err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 2*time.Second, "alpha leading sched", card("election sched")+`?.querySelector(".summary")?.textContent === '"alpha:8080"'`)
	won := make(chan error, 1)
	go func() { won <- e2.Campaign(ectx, "beta:8080") }()
	waitDOM(t, ctx, 5*time.Second, "beta as a candidate", card("election sched")+`?.querySelectorAll(".field-candidates li").length === 1`)
	if err := e1.Resign(ectx); err != nil {
		t.Fatal(err)
	}
	if err := <-won; err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 2*time.Second, "beta leading sched", card("election sched")+`?.querySelector(".summary")?.textContent === '"beta:8080"' && `+
		card("election sched")+`.querySelectorAll(".timeline li").length === 2`)

	// 4. Other primitives, for the screenshot and the exporter.
	pool := concurrency.NewSemaphore(s1, "pool", 3)
	if err := pool.Acquire(ectx, 2); err != nil {
		t.Fatal(err)
	}
	q := concurrency.NewQueue(c, "jobs")
	for _, v := range []string{"a", "b", "c"} {
		if err := q.Enqueue(ectx, v); err != nil {
			t.Fatal(err)
		}
	}
	rw := concurrency.NewRWMutex(s2, "config")
	if err := rw.RLock(ectx); err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 2*time.Second, "the semaphore, queue and rwmutex",
		card("semaphore pool")+` && `+card("queue jobs")+` && `+card("rwmutex config")+` && `+
			card("queue jobs")+`.querySelector(".summary").textContent.startsWith("3 items")`)

	metrics := get(t, url+"metrics")
	for _, want := range []string{
		`baton_holders{kind="lock",name="demo"} 1`,
		`baton_handoffs_total{kind="lock",name="demo"} 2`,
		`baton_leader_changes_total{name="sched"} 2`,
		`baton_semaphore_permits_in_use{name="pool"} 2`,
		`baton_semaphore_permits{name="pool"} 3`,
		`baton_queue_depth{name="jobs"} 3`,
		`baton_holders{kind="rwmutex",name="config"} 1`,
		`baton_held_for_seconds{kind="lock",name="demo"} `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, metrics)
		}
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(shot)); err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if os.Getenv("BATON_WRITE_SCREENSHOT") != "" {
		p := filepath.Join("..", "..", "docs", "web.png")
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", p)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestWebAssetsEmbedded: the page and its script and style come from the
// binary and name no other host.
func TestWebAssetsEmbedded(t *testing.T) {
	srv := testutil.Server(t)
	url := startWeb(t, map[string]string{"BATON_ENDPOINTS": strings.Join(srv.Endpoints(), ",")})
	for _, p := range []string{"", "app.js", "style.css"} {
		body := get(t, url+p)
		if len(body) < 100 || strings.Contains(body, "http://") || strings.Contains(body, "https://") {
			t.Errorf("%s: %d bytes, or it loads from another host", url+p, len(body))
		}
	}
	state := get(t, url+"state")
	if !strings.Contains(state, `"entries":[]`) {
		t.Errorf("/state of an empty server: %s", state)
	}
}
