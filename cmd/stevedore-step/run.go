package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stevedore/internal/stepspec"
)

const (
	// maxSecrets bounds the secrets document read from standard input.
	maxSecrets = 16 << 20
	// drainTimeout is how long the runner keeps reading the script's pipes
	// after its main process has exited: background processes that hold
	// them open must not hang the step.
	drainTimeout = 2 * time.Second
	// killedDrainTimeout is how long it reads them after killing the
	// process group, before it stops reading (a process that left the group
	// may still hold them).
	killedDrainTimeout = 500 * time.Millisecond
)

// shBoot is sh's command: source the helpers, then the script, so that $0 is
// the script, the positional arguments are empty, and `exit N` and `set -e`
// behave as in the script itself. (bash reads the helpers through BASH_ENV
// and runs the script as a file.)
const shBoot = `. "$` + envStepDir + `/` + runnerDirName + `/` + helpersSh + `"
. "$0"
`

// runStep is "stevedore-step run STEPDIR": run the step's script once, and
// return its exit code (or the runner's, exitRunnerError etc.).
func runStep(dirArg string) int {
	stepDir, err := filepath.Abs(dirArg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: run: %v\n", err)
		return exitRunnerError
	}
	// Catch cancellation first: a SIGTERM while the runner is still
	// preparing must not kill it before it has written result.json.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, cancelSignals...)

	// The idempotency guard: output.log exists once a runner has started
	// this step. A second runner (an agent retrying after a crash) must not
	// run the script again, nor touch the first one's files.
	logPath := filepath.Join(stepDir, stepspec.OutputLog)
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if errors.Is(err, fs.ErrExist) {
		fmt.Fprintf(os.Stderr, "stevedore-step: %s exists: this step has already been started; not running it again\n", logPath)
		return exitRunnerError
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: run: %v\n", err)
		return exitRunnerError
	}
	r := &runner{
		stepDir: stepDir,
		workDir: filepath.Join(stepDir, stepspec.WorkDir),
		logFile: f,
		sigs:    sigs,
	}
	return r.run(os.Stdin)
}

// runner runs one step.
type runner struct {
	stepDir string
	workDir string
	logFile *os.File
	sigs    chan os.Signal
	spec    stepspec.Spec
	secrets stepspec.Secrets
	out     *output
	res     stepspec.Result
}

func (r *runner) run(stdin io.Reader) int {
	r.res.StartedAt = time.Now()
	specErr := stepspec.ReadJSON(filepath.Join(r.stepDir, stepspec.SpecFile), &r.spec)
	r.out = newOutput(r.logFile, r.spec.FirstSequence, r.spec.LogLimit)
	r.out.levels = r.spec.LogLevels
	r.out.workDir = r.workDir
	if specErr != nil {
		return r.fail(exitRunnerError, "read the step's spec: %v", specErr)
	}
	if sig, err := r.readSecrets(stdin); sig != nil {
		return r.cancelledBeforeStart(sig)
	} else if err != nil {
		return r.fail(exitRunnerError, "read the secrets on standard input: %v", err)
	}
	r.out.stepKey = r.secrets.StepKey
	for _, v := range r.secrets.Variables {
		r.out.masks.add(v.Value)
	}

	path, args, extraEnv, err := r.command()
	if errors.Is(err, exec.ErrNotFound) {
		return r.fail(exitNotFound, "%v", err)
	}
	if err != nil {
		return r.fail(exitRunnerError, "%v", err)
	}
	script := filepath.Join(r.stepDir, stepspec.ScriptFile)
	if _, err := os.Stat(script); err != nil {
		return r.fail(exitRunnerError, "the script: %v", err)
	}
	if err := os.MkdirAll(r.workDir, 0o755); err != nil {
		return r.fail(exitRunnerError, "the work directory: %v", err)
	}
	if err := writeHelpers(filepath.Join(r.stepDir, runnerDirName)); err != nil {
		return r.fail(exitRunnerError, "%v", err)
	}
	self, err := executable()
	if err != nil {
		return r.fail(exitRunnerError, "the runner's own path: %v", err)
	}
	memfd, err := secretsFile(r.secrets.Variables)
	if err != nil {
		// The values are in the environment still; only get-variable
		// cannot read them.
		r.out.runnerLine("sensitive variables are not available to get_variable: %v", err)
	}
	var params *os.File
	if r.spec.Syntax == stepspec.SyntaxBash {
		if params, err = r.parametersFile(); err != nil {
			// get_octopusvariable still works, through the runner.
			r.out.runnerLine("octopus_parameters is not available: %v", err)
		}
	}
	env := r.environment(self, memfd != nil, params != nil, extraEnv)
	return r.start(path, args, env, memfd, params)
}

// readSecrets reads the secrets document until EOF, or until a cancel
// signal, which it returns: an agent that never closes the runner's stdin
// must not make it deaf to SIGTERM. An empty document means no secrets.
func (r *runner) readSecrets(stdin io.Reader) (os.Signal, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := io.ReadAll(io.LimitReader(stdin, maxSecrets+1))
		done <- result{data, err}
	}()
	var res result
	select {
	case res = <-done:
	case sig := <-r.sigs:
		return sig, nil
	}
	if res.err != nil {
		return nil, res.err
	}
	if len(res.data) > maxSecrets {
		return nil, fmt.Errorf("longer than %d bytes", maxSecrets)
	}
	if len(bytes.TrimSpace(res.data)) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(res.data, &r.secrets); err != nil {
		return nil, secretsError(err)
	}
	if n := len(r.secrets.StepKey); n != 0 && n != 32 {
		return nil, fmt.Errorf("the step key has %d bytes, not 32", n)
	}
	return nil, nil
}

// secretsError describes a secrets document that cannot be decoded without
// quoting it: the log must not hold a piece of a secret.
func secretsError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("not a JSON document (syntax error at byte %d)", syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("field %q has the wrong type (%s)", typ.Field, typ.Value)
	}
	return errors.New("not a valid secrets document")
}

// command returns the interpreter's path, its arguments (argv[0] first) and
// environment entries of its own.
func (r *runner) command() (path string, args, env []string, err error) {
	script := filepath.Join(r.stepDir, stepspec.ScriptFile)
	runnerDir := filepath.Join(r.stepDir, runnerDirName)
	switch r.spec.Syntax {
	case stepspec.SyntaxBash:
		path, err = lookInterpreter("bash")
		// BASH_ENV is expanded by bash: name the directory through a
		// variable, so that no character of the path is ever interpreted.
		env = []string{"BASH_ENV=${" + envStepDir + "}/" + runnerDirName + "/" + helpersSh}
		args = []string{"bash", "--noprofile", "--norc", script}
	case stepspec.SyntaxSh:
		path, err = lookInterpreter("sh")
		args = []string{"sh", "-c", shBoot, script}
	case stepspec.SyntaxPython:
		name := "python3"
		path, err = lookInterpreter(name)
		if err != nil {
			name = "python"
			path, err = lookInterpreter("python3", name)
		}
		args = []string{name, filepath.Join(runnerDir, pythonBootstrap), script}
	default:
		return "", nil, nil, fmt.Errorf("unknown script syntax %q (want %s, %s or %s)",
			r.spec.Syntax, stepspec.SyntaxBash, stepspec.SyntaxSh, stepspec.SyntaxPython)
	}
	return path, args, env, err
}

// lookInterpreter finds the last of names in PATH; the error names them all.
func lookInterpreter(names ...string) (string, error) {
	path, err := exec.LookPath(names[len(names)-1])
	if err != nil {
		return "", fmt.Errorf("the interpreter %s was not found in PATH=%s: install it in the image, or use another syntax: %w",
			strings.Join(names, " or "), os.Getenv("PATH"), exec.ErrNotFound)
	}
	return path, nil
}

// executable returns the runner's own absolute path, for the helpers.
func executable() (string, error) {
	self, err := os.Executable()
	if err == nil {
		return self, nil
	}
	if strings.Contains(os.Args[0], "/") {
		return filepath.Abs(os.Args[0])
	}
	return exec.LookPath(os.Args[0])
}

// environment returns the script's environment: the runner's own (PATH,
// HOME...), then the step's variables, then the runner's STEVEDORE_*
// entries, which nothing overrides.
func (r *runner) environment(self string, secretsFD, paramsFD bool, extra []string) []string {
	env := make([]string, 0, len(os.Environ())+len(r.spec.Variables)+len(r.secrets.Variables)+8)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != envSecretsFD && k != envParametersFD {
			env = append(env, kv)
		}
	}
	if r.spec.Syntax == stepspec.SyntaxPython && os.Getenv("PYTHONUNBUFFERED") == "" {
		// Lines reach the log as they are printed, in order with stderr's.
		// Before the variables: a step may set it otherwise.
		env = append(env, "PYTHONUNBUFFERED=1")
	}
	vars, skipped := variableEnv(r.spec.Variables, r.secrets.Variables)
	for _, name := range skipped {
		r.out.runnerLine("variable %q is not in the environment: its name or value is empty or holds a NUL byte", name)
	}
	env = append(env, vars...)
	env = append(env,
		envTicket+"="+r.spec.Ticket,
		envStepDir+"="+r.stepDir,
		envWorkDir+"="+r.workDir,
		envRunner+"="+self,
	)
	if secretsFD {
		env = append(env, envSecretsFD+"="+strconv.Itoa(secretsFDChild))
	}
	if paramsFD {
		env = append(env, envParametersFD+"="+strconv.Itoa(parametersFDChild))
	}
	return append(env, extra...)
}

// start runs the script and waits for it and its output.
func (r *runner) start(path string, args, env []string, memfd, params *os.File) int {
	if memfd != nil {
		defer memfd.Close() // the script has its own copy
	}
	if params != nil {
		defer params.Close()
	}
	select {
	case sig := <-r.sigs: // a signal that came during the preparations
		return r.cancelledBeforeStart(sig)
	default:
	}
	outR, outW, err := newPipe()
	if err != nil {
		return r.fail(exitRunnerError, "pipe: %v", err)
	}
	errR, errW, err := newPipe()
	if err != nil {
		unix.Close(outR)
		outW.Close()
		return r.fail(exitRunnerError, "pipe: %v", err)
	}
	p, err := newPump(r.out, outR, errR)
	if err != nil {
		unix.Close(outR)
		unix.Close(errR)
		outW.Close()
		errW.Close()
		return r.fail(exitRunnerError, "pipe: %v", err)
	}
	cmd := &exec.Cmd{
		Path:   path,
		Args:   args,
		Dir:    r.workDir,
		Env:    env,
		Stdin:  nil, // /dev/null
		Stdout: outW,
		Stderr: errW,
		// Its own process group: cancelling signals all of the script's
		// processes, and a Ctrl-C on the runner's terminal reaches only
		// the runner.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if memfd != nil || params != nil {
		// fd 3 (secretsFDChild) and fd 4 (parametersFDChild); a nil one
		// is closed in the script.
		cmd.ExtraFiles = []*os.File{memfd, params}
	}
	r.res.StartedAt = time.Now()
	err = cmd.Start()
	// The script has its copies; the runner's write ends must be closed for
	// the read ends to see EOF.
	outW.Close()
	errW.Close()
	go p.run() // closes outR and errR
	if err != nil {
		p.stop()
		<-p.done
		code := exitCannotExec
		if errors.Is(err, fs.ErrNotExist) {
			code = exitNotFound
		}
		return r.fail(code, "start %s: %v", path, err)
	}

	g := newGroup(cmd.Process.Pid, time.Duration(r.spec.CancelGrace), r.out, r.stepDir)
	go g.watch(r.sigs)

	if err := waitExited(cmd.Process.Pid); err != nil {
		r.out.runnerLine("waiting for the script: %v", err)
	}
	r.drain(p, g)
	g.reap()
	waitErr := cmd.Wait()

	state := cmd.ProcessState
	if state == nil {
		return r.fail(exitRunnerError, "wait for the script: %v", waitErr)
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		r.res.Signal = signalName(ws.Signal())
		r.res.ExitCode = 128 + int(ws.Signal())
	} else {
		r.res.ExitCode = state.ExitCode()
	}
	r.out.mu.Lock()
	// failStep's message wins over resultMessage's: it is the reason the
	// script gave for failing, the more specific of the two. Message holds
	// either, so that an agent that knows no ResultMessage shows it on a
	// failure; ResultMessage alone is the reason of a script that succeeded.
	switch {
	case r.out.failed:
		r.res.Message = r.out.failMessage
	case r.out.hasResult:
		r.res.Message = r.out.resultMessage
	}
	if r.out.hasResult {
		r.res.ResultMessage = r.out.resultMessage
	}
	r.out.mu.Unlock()
	if g.cancelled() != nil && r.res.Message == "" {
		r.res.Message = g.cancelMessage()
	}
	return r.finish()
}

// drain waits for the script's pipes to reach EOF after its main process
// has exited, for drainTimeout at most; then kills what is left of its
// process group, and stops reading the pipes if that did not close them.
func (r *runner) drain(p *pump, g *group) {
	timer := time.NewTimer(drainTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		r.out.runnerLine("the script's output was still open %s after it exited: killing the processes it left behind", drainTimeout)
	}
	g.signal(unix.SIGKILL)
	select {
	case <-p.done:
		return
	case <-time.After(killedDrainTimeout):
	}
	p.stop()
	<-p.done
}

// cancelledBeforeStart records a cancel that came before the script started:
// the script is not started at all.
func (r *runner) cancelledBeforeStart(sig os.Signal) int {
	r.out.runnerLine("received %s before the script started: not starting it", signalName(sig))
	r.res.Signal = signalName(sig)
	if s, ok := sig.(syscall.Signal); ok {
		r.res.ExitCode = 128 + int(s)
	}
	r.res.Message = "cancelled before the script started"
	return r.finish()
}

// fail records that the runner could not run the script: a stderr record
// in the log, and RunnerError in the result.
func (r *runner) fail(code int, format string, args ...any) int {
	msg := fmt.Sprintf(format, args...)
	r.out.runnerLine("%s", msg)
	r.res.RunnerError = true
	r.res.ExitCode = code
	r.res.Message = msg
	return r.finish()
}

// finish syncs output.log, then writes result.json: its existence tells the
// agent that every record is in output.log.
func (r *runner) finish() int {
	r.res.FinishedAt = time.Now()
	if err := r.out.finish(r.logFile); err != nil {
		// The log is incomplete: a runner error, whatever the script did.
		r.res.RunnerError = true
		msg := fmt.Sprintf("write %s: %v", stepspec.OutputLog, err)
		if r.res.Message != "" {
			msg = r.res.Message + "; " + msg
		}
		r.res.Message = msg
		fmt.Fprintf(os.Stderr, "stevedore-step: %s\n", msg)
	}
	r.res.LastSequence = r.out.w.LastSeq()
	if err := r.logFile.Close(); err != nil && !r.res.RunnerError {
		r.res.RunnerError = true
		r.res.Message = fmt.Sprintf("close %s: %v", stepspec.OutputLog, err)
	}
	if err := stepspec.WriteJSON(filepath.Join(r.stepDir, stepspec.ResultFile), r.res, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: %v\n", err)
		return exitRunnerError
	}
	return r.res.ExitCode
}
