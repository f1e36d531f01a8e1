package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// The web page in Debian's Chromium, headless, against a real server and a
// real polling agent.

// browser starts a headless Chromium for the test, with an empty profile
// and none of its calls home (which stall it on a machine offline), and
// returns a tab's context. Without Chromium the test skips, and fails in CI.
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{os.Getenv("STEVEDORE_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		testenv.Unavailable(t, "no chromium (Debian's chromium package) for the web page's browser tests")
	}
	profile := t.TempDir() // removed after the browser stops (cleanups run last-in first-out)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(profile),
		chromedp.WindowSize(1366, 900))
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	watchPage(t, ctx)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("chromium %s did not start: %v", path, err)
	}
	return ctx
}

// watchPage fails the test on an exception the page's script throws and on
// a Content-Security-Policy refusal, which both mean a broken page. The
// events are reported at the test's end: the listener runs in the tab's
// reading loop, which must not block.
func watchPage(t *testing.T, ctx context.Context) {
	var mu sync.Mutex
	var problems []string
	note := func(s string) { mu.Lock(); problems = append(problems, s); mu.Unlock() }
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			note(fmt.Sprintf("the page threw at %s:%d: %s", d.URL, d.LineNumber+1, desc))
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError && strings.Contains(ev.Entry.Text, "Content Security Policy") {
				note("content security policy refusal: " + ev.Entry.Text)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Error(p)
		}
	})
}

// tab opens a tab of its own cookie jar (a browser context) in the browser of ctx.
func tab(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	c, cancel := chromedp.NewContext(ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	watchPage(t, c)
	if err := chromedp.Do(c); err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, pageState(ctx))
	}
}

// pageState is the page's address and text, to say where a test stood.
func pageState(ctx context.Context) string {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(c, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 3000)`))
	if err != nil {
		return "(the page cannot be read: " + err.Error() + ")"
	}
	return "the page: " + s
}

// waitJS waits until the expression is true in the page.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(c, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		t.Fatalf("%s: waiting for %s: %v\n%s", what, expr, err, pageState(ctx))
	}
}

// evalJS evaluates the expression in the page, awaiting a promise, into T.
func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot writes the page as shown to NAME.png in the screenshots
// directory: $STEVEDORE_SCREENSHOTS, or bin/screenshots in the repository
// (the README shows copies of them from docs/screenshots).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("STEVEDORE_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "bin", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func hostStep(script string) *pb.StartStepRequest {
	return &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: script}}
}

// deployScript prints a line of each kind, then ticks until cancelled.
const deployScript = `echo "preparing release 2.4.1"
echo '##octopus[stdout-verbose]'; echo 'resolved 14 packages'; echo '##octopus[stdout-default]'
echo '##octopus[stdout-highlight]'; echo 'deploying 2.4.1 to production'; echo '##octopus[stdout-default]'
echo '##octopus[stdout-warning]'; echo 'disk on web-3 is 91% full'; echo '##octopus[stdout-default]'
echo 'retrying the health check' >&2
for i in $(seq 1 600); do echo "health check $i: ok"; sleep 0.1; done`

// signIn signs the tab in with the admin's credentials, or with key.
func signIn(t *testing.T, ctx context.Context, base, key string) {
	t.Helper()
	run(t, ctx, "the sign-in page", chromedp.Navigate(base+"/steps"), chromedp.WaitVisible(chromedp.ID("password")))
	if key == "" {
		run(t, ctx, "sign in", chromedp.SendKeys(chromedp.ID("password"), adminPassword), chromedp.Click(chromedp.CSS("#login-password button")))
	} else {
		run(t, ctx, "sign in with a key", chromedp.SendKeys(chromedp.ID("apikey"), key), chromedp.Click(chromedp.CSS("#login-key button")))
	}
	run(t, ctx, "the steps after sign-in", chromedp.WaitVisible(chromedp.CSS("table.steps tbody tr")))
}

// TestWebPage: sign in as the admin, watch a step's lines arrive live with
// their levels styled, refuse a request without the CSRF token, cancel the
// step with the button, see the workers, sign out; screenshots on the way.
func TestWebPage(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 4)
	// A second worker that went away, for the workers page.
	gone := e.pollingAgentServing("w2", 2, e.addr, func(a pb.AgentServer) pb.AgentServer { return a })
	a := e.api()
	ctx := browser(t)

	// A few finished steps for the list.
	done := a.submit(map[string]any{"pool": "linux"}, hostStep(`echo built; set_variable Version 2.4.1; set_variable DbPassword s3cret sensitive`))
	a.submit(map[string]any{"pool": "linux"}, hostStep(`echo 'tests: 2 failed' >&2; exit 2`))
	a.follow(done.ID)

	run(t, ctx, "a laptop's screen", chromedp.EmulateViewport(1366, 900))
	signIn(t, ctx, a.base, "")
	v := a.submit(map[string]any{"pool": "linux"}, hostStep(deployScript))

	// The list shows it, live, newest first.
	waitJS(t, ctx, "the new step in the list", `document.querySelector('table.steps tbody tr a')?.textContent === '`+v.ID+`'`)

	// Its page: the lines arrive as they are written.
	run(t, ctx, "the step's page", chromedp.Click(chromedp.CSS(`table.steps a[href="/steps/`+v.ID+`"]`)), chromedp.WaitVisible(chromedp.ID("log")))
	waitJS(t, ctx, "a first tick", `[...document.querySelectorAll('#log .ln .tx')].some(e => e.textContent === 'health check 3: ok')`)
	waitJS(t, ctx, "a later tick, live", `[...document.querySelectorAll('#log .ln .tx')].some(e => e.textContent === 'health check 12: ok')`)
	styled := evalJS[map[string]any](t, ctx, `(() => {
		const ln = (text) => [...document.querySelectorAll('#log .ln')].find(e => e.querySelector('.tx').textContent === text);
		const cls = (text) => ln(text)?.className || 'absent';
		const hl = ln('deploying 2.4.1 to production'), warn = ln('disk on web-3 is 91% full');
		return {highlight: cls('deploying 2.4.1 to production'), warning: cls('disk on web-3 is 91% full'),
			stderr: cls('retrying the health check'), verbose: cls('resolved 14 packages'),
			highlightWeight: hl ? getComputedStyle(hl.querySelector('.tx')).fontWeight : '',
			warningBackground: warn ? getComputedStyle(warn).backgroundColor : ''};
	})()`)
	t.Logf("styled lines: %v", styled)
	if !strings.Contains(styled["highlight"].(string), "lvl-highlight") || styled["highlightWeight"] != "700" {
		t.Errorf("the highlighted line is not styled: %v", styled)
	}
	if !strings.Contains(styled["warning"].(string), "lvl-warning") || styled["warningBackground"] == "rgba(0, 0, 0, 0)" {
		t.Errorf("the warning line is not styled: %v", styled)
	}
	if !strings.Contains(styled["stderr"].(string), "src-stderr") {
		t.Errorf("the stderr line is not marked: %v", styled)
	}
	if styled["verbose"] != "absent" {
		t.Errorf("a verbose line is shown before the toggle: %v", styled)
	}
	run(t, ctx, "the verbose toggle", chromedp.Click(chromedp.ID("show-verbose")))
	waitJS(t, ctx, "the verbose line", `[...document.querySelectorAll('#log .ln.lvl-verbose .tx')].some(e => e.textContent === 'resolved 14 packages')`)
	// The screenshot shows the log from its start, with every kind of line.
	evalJS[bool](t, ctx, `(() => { window.scrollTo(0, 0); document.getElementById('log').scrollTop = 0; return true; })()`)
	run(t, ctx, "a moment to draw", chromedp.Sleep(100*time.Millisecond))
	screenshot(t, ctx, "step-running")
	run(t, ctx, "a phone's width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	evalJS[bool](t, ctx, `(() => { window.scrollTo(0, 0); const l = document.getElementById('log'); l.scrollTop = l.scrollHeight; return true; })()`)
	run(t, ctx, "a moment to draw", chromedp.Sleep(100*time.Millisecond))
	if w := evalJS[float64](t, ctx, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the step's page is %vpx wide at a phone's 390px", w)
	}
	screenshot(t, ctx, "step-phone")
	run(t, ctx, "back to a laptop's screen", chromedp.EmulateViewport(1366, 900))

	// Search within the log, from the keyboard.
	run(t, ctx, "search", chromedp.SendKeys(chromedp.ID("log-search"), "disk on web\r"))
	waitJS(t, ctx, "a match", `document.getElementById('search-info').textContent === '1 of 1' && document.querySelector('#log .ln.current mark')?.textContent === 'disk on web'`)
	// The whole log as text, with its marks.
	text := evalJS[string](t, ctx, `fetch(document.getElementById('download-log').href).then(r => r.text())`)
	if !strings.Contains(text, "[highlight] deploying 2.4.1 to production\n[warning] disk on web-3 is 91% full\n[stderr] retrying") {
		t.Errorf("the downloaded log:\n%.600s", text)
	}

	// The API refuses a cancel without the session's CSRF token.
	code := evalJS[float64](t, ctx, `fetch('/api/steps/`+v.ID+`/cancel', {method: 'POST'}).then(r => r.status)`)
	if code != http.StatusForbidden {
		t.Errorf("a cancel without the CSRF token: %v, want 403", code)
	}
	if st := a.step(v.ID); st.State == "complete" || st.CancelRequested {
		t.Fatalf("the step after a refused cancel: %+v", st.StepRecord)
	}

	// Cancel with the button, confirmed in the dialog; Escape first keeps it.
	run(t, ctx, "the cancel button", chromedp.Click(chromedp.ID("cancel")), chromedp.WaitVisible(chromedp.ID("cancel-dialog")))
	run(t, ctx, "escape", chromedp.KeyEvent(kb.Escape), chromedp.WaitNotVisible(chromedp.ID("cancel-dialog")))
	if st := a.step(v.ID); st.CancelRequested {
		t.Fatal("the dialog dismissed, the step is cancelled anyway")
	}
	run(t, ctx, "the cancel button again", chromedp.Click(chromedp.ID("cancel")), chromedp.WaitVisible(chromedp.ID("cancel-dialog")))
	run(t, ctx, "confirm the cancel", chromedp.Click(chromedp.ID("cancel-confirm")))
	waitJS(t, ctx, "the step cancelled", `document.querySelector('.step-head .badge')?.textContent === 'CANCELLED'`)
	if st := a.step(v.ID); st.Outcome != "CANCELLED" {
		t.Errorf("the step's outcome through the API: %q", st.Outcome)
	}
	if evalJS[bool](t, ctx, `document.getElementById('cancel').checkVisibility()`) {
		t.Error("a cancel button on a completed step")
	}

	// The finished step shows its output variables, a sensitive one masked.
	run(t, ctx, "the finished step", chromedp.Navigate(a.base+"/steps/"+done.ID), chromedp.WaitVisible(chromedp.CSS("table.vars")))
	vars := evalJS[string](t, ctx, `document.querySelector('table.vars').innerText`)
	if !strings.Contains(vars, "2.4.1") || !strings.Contains(vars, "********") || strings.Contains(vars, "s3cret") {
		t.Errorf("output variables shown as %q", vars)
	}

	// A line's link leads to it.
	run(t, ctx, "a line link", chromedp.Navigate(a.base+"/steps/"+v.ID+"#L3"), chromedp.WaitVisible(chromedp.CSS("#log .ln.target")))
	if n := evalJS[string](t, ctx, `document.querySelector('#log .ln.target .no').textContent`); n != "3" {
		t.Errorf("the linked line is %q, want 3", n)
	}

	run(t, ctx, "the steps list", chromedp.Navigate(a.base+"/steps"), chromedp.WaitVisible(chromedp.CSS("table.steps tbody tr")))
	waitJS(t, ctx, "three steps", `document.querySelectorAll('table.steps tbody tr').length === 3`)
	screenshot(t, ctx, "steps")
	gone.disconnect()
	run(t, ctx, "the workers", chromedp.Navigate(a.base+"/workers"))
	waitJS(t, ctx, "the workers", `document.querySelector('table.workers tbody th')?.textContent.startsWith('w1') &&
		document.querySelector('table.workers tbody tr:nth-child(2)')?.textContent.includes('disconnected')`)
	screenshot(t, ctx, "workers")

	// A phone's width.
	run(t, ctx, "a phone's width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.Navigate(a.base+"/steps"),
		chromedp.WaitVisible(chromedp.CSS("table.steps tbody tr")))
	waitJS(t, ctx, "three steps", `document.querySelectorAll('table.steps tbody tr').length === 3`)
	if w := evalJS[float64](t, ctx, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the steps list is %vpx wide at a phone's 390px", w)
	}
	screenshot(t, ctx, "steps-phone")
	run(t, ctx, "back to a laptop's screen", chromedp.EmulateViewport(1366, 900))

	// Sign out: the session is gone, for the page and for the API.
	run(t, ctx, "sign out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("password")))
	if code := evalJS[float64](t, ctx, `fetch('/api/steps').then(r => r.status)`); code != http.StatusUnauthorized {
		t.Errorf("the API after sign-out: %v, want 401", code)
	}
}

// TestWebReaderHasNoCancel: a reader's session shows no cancel button,
// and the API refuses its cancel anyway, with the CSRF token.
func TestWebReaderHasNoCancel(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	a := e.api()
	ctx := tab(t, browser(t))
	code, b := a.do("POST", "/api/keys", map[string]any{"name": "dashboard", "role": "reader"})
	var key struct{ Key string }
	if code != http.StatusCreated || json.Unmarshal(b, &key) != nil {
		t.Fatalf("a reader key: %d %s", code, b)
	}
	v := a.submit(map[string]any{"pool": "linux"}, hostStep(deployScript))
	t.Cleanup(func() { a.do("POST", "/api/steps/"+v.ID+"/cancel", nil) })

	signIn(t, ctx, a.base, key.Key)
	if who := evalJS[string](t, ctx, `document.getElementById('who').textContent`); who != "key:dashboard (reader)" {
		t.Errorf("signed in as %q", who)
	}
	run(t, ctx, "the step's page", chromedp.Navigate(a.base+"/steps/"+v.ID), chromedp.WaitVisible(chromedp.ID("log")))
	waitJS(t, ctx, "a tick", `[...document.querySelectorAll('#log .ln .tx')].some(e => e.textContent.startsWith('health check'))`)
	if evalJS[bool](t, ctx, `document.getElementById('cancel').checkVisibility()`) {
		t.Error("a reader sees the cancel button")
	}
	code2 := evalJS[float64](t, ctx, `fetch('/web/session').then(r => r.json()).then(s =>
		fetch('/api/steps/`+v.ID+`/cancel', {method: 'POST', headers: {'X-CSRF-Token': s.csrf_token}})).then(r => r.status)`)
	if code2 != http.StatusForbidden {
		t.Errorf("a reader's cancel: %v, want 403", code2)
	}
	if st := a.step(v.ID); st.CancelRequested || st.State == "complete" {
		t.Errorf("the step after a reader's cancel: %+v", st.StepRecord)
	}
}

// TestWebBigLog: a 200,000-line log and a thousand steps do not freeze
// the page: the tail shows first, the document holds only the rows in
// sight, and earlier lines come when scrolled to.
func TestWebBigLog(t *testing.T) {
	const n = 200000
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	a := e.api()
	v := a.submit(map[string]any{"pool": "linux"}, hostStep(fmt.Sprintf(`seq -f 'line %%.0f' 1 %d`, n)))
	start := time.Now()
	a.follow(v.ID)
	t.Logf("%d lines through the server in %s", n, time.Since(start).Round(time.Millisecond))
	for range 1000 {
		if _, err := e.srv.Submit(server.SubmitRequest{Worker: "nobody", Step: numbered(1, "0")}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := browser(t)
	signIn(t, ctx, a.base, "")
	waitJS(t, ctx, "a page of steps", `document.querySelectorAll('table.steps tbody tr').length === 50 && document.querySelector('.pager-info').textContent.includes('1,001 steps')`)

	start = time.Now()
	run(t, ctx, "the big log", chromedp.Navigate(a.base+"/steps/"+v.ID))
	last := fmt.Sprintf("line %d", n)
	waitJS(t, ctx, "the last line", `[...document.querySelectorAll('#log .ln .tx')].some(e => e.textContent === '`+last+`')`)
	t.Logf("the tail of %d lines shown in %s", n, time.Since(start).Round(time.Millisecond))
	if rows := evalJS[float64](t, ctx, `document.querySelectorAll('#log .ln').length`); rows > 200 {
		t.Errorf("%v rows in the document, want only those in sight", rows)
	}
	// To the top: the first lines are fetched and shown.
	start = time.Now()
	evalJS[bool](t, ctx, `(() => { document.getElementById('log').scrollTop = 0; return true; })()`)
	waitJS(t, ctx, "the first line", `(() => { const l = document.getElementById('log'); l.scrollTop = 0; return [...l.querySelectorAll('.ln .tx')].some(e => e.textContent === 'line 1'); })()`)
	t.Logf("scrolled to the first line in %s", time.Since(start).Round(time.Millisecond))
	// A line's link far from both ends.
	run(t, ctx, "a line link", chromedp.Navigate(a.base+"/steps/"+v.ID+"#L100001"))
	waitJS(t, ctx, "the linked line", `document.querySelector('#log .ln.target .no')?.textContent === '100001'`)
	if text := evalJS[string](t, ctx, `document.querySelector('#log .ln.target .tx').textContent`); !strings.HasPrefix(text, "line 100") {
		t.Errorf("line 100001 reads %q", text)
	}
}
