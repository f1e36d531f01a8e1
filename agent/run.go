package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"stevedore/executor"
	"stevedore/internal/steplog"
	"stevedore/internal/stepspec"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

// killMargin is how long after the grace period the agent waits for the
// runner's own KILL before it kills the step's processes itself.
const killMargin = 3 * time.Second

// run drives a step from its journal record to COMPLETE. It is the only
// goroutine that changes a step's state.
func (a *Agent) run(s *step) {
	log := a.log.With("ticket", s.rec.Ticket)
	defer s.markQueued()
	req := &pb.StartStepRequest{}
	if err := proto.Unmarshal(s.rec.Request, req); err != nil {
		a.finish(s, nil, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", fmt.Sprintf("the journal's copy of the request is unreadable: %v", err))
		return
	}
	// The isolation hold (taken below, or reattached by resume) ends with the run.
	defer a.isolation.release(s.rec.Ticket)
	secrets, err := a.openSecrets(s)
	if err != nil {
		a.finish(s, nil, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}
	spec := a.execSpec(s, req, secrets)
	if s.rec.RunnerStarted {
		// An earlier agent process started the runner: follow it again,
		// in the slot resume gave it.
		defer a.slots.release(s.rec.Ticket)
		a.reattach(s, spec, req)
		return
	}
	ex, err := a.executorFor(s.ctx, &s.rec, req)
	if err != nil {
		a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}

	// The isolation mutex first, so a step waiting for it holds no slot.
	if err := a.acquireIsolation(s, req); err != nil {
		if errors.Is(err, errIsolationTimeout) {
			s.agentLog(err.Error())
			a.finish(s, spec, pb.Outcome_OUTCOME_ISOLATION_TIMEOUT, nil, "", err.Error())
			return
		}
		a.finishStopped(s, spec, ex, "while it waited for its isolation mutex")
		return
	}
	// A slot, in order.
	err = a.slots.acquire(s.ctx, s.rec.Ticket, func(holders []string, ahead int) {
		s.markQueued()
		s.agentLog(fmt.Sprintf("waiting for a free step slot: %d of %d in use (%s), %d waiting ahead",
			len(holders), a.cfg.MaxSteps, strings.Join(holders, ", "), ahead))
	})
	if err != nil {
		a.finishStopped(s, spec, ex, "while it waited for a step slot")
		return
	}
	defer a.slots.release(s.rec.Ticket)
	s.markQueued()
	if t := req.GetTimeout().AsDuration(); t > 0 {
		timer := time.AfterFunc(t, func() { a.stop(s, pb.Outcome_OUTCOME_TIMED_OUT, fmt.Sprintf("timed out after %s", t)) })
		defer timer.Stop()
	}

	if err := a.prepareStepDir(s, req); err != nil {
		a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}
	if spec.Container != nil {
		a.setState(s, pb.StepState_STEP_STATE_PULLING)
	}
	if err := ex.Prepare(s.ctx, spec, func(f string, args ...any) { s.agentLog(fmt.Sprintf(f, args...)) }); err != nil {
		if s.ctx.Err() != nil {
			a.finishStopped(s, spec, ex, preparingWhen(spec))
			return
		}
		outcome := pb.Outcome_OUTCOME_AGENT_ERROR
		switch {
		case errors.Is(err, executor.ErrImageRejected):
			outcome = pb.Outcome_OUTCOME_IMAGE_REJECTED
		case errors.Is(err, executor.ErrPullFailed):
			outcome = pb.Outcome_OUTCOME_PULL_FAILED
		}
		log.Info("step could not start", "outcome", outcome, "error", err)
		s.agentLog(err.Error())
		// Nothing of the step ran: the probed container has no further use.
		if rerr := ex.Remove(a.ctx, spec); rerr != nil {
			log.Warn("could not remove the step's container", "error", rerr)
		}
		a.finish(s, spec, outcome, nil, "", err.Error())
		return
	}

	// The runner's records are numbered after the agent's lines so far.
	s.mu.Lock()
	first := s.firstRunnerSeqLocked()
	grace := req.GetCancelGrace().AsDuration()
	if grace <= 0 {
		grace = a.cfg.DefaultGrace
	}
	runSpec := stepspec.Spec{Ticket: s.rec.Ticket, Syntax: syntaxName(req.GetScript().GetSyntax()), FirstSequence: first,
		CancelGrace: stepspec.Duration(grace), LogLimit: a.cfg.MaxLogSize, LogLevels: true}
	for _, v := range req.GetVariables() {
		if !v.GetSensitive() {
			runSpec.Variables = append(runSpec.Variables, stepspec.Variable{Name: v.GetName(), Value: v.GetValue()})
		}
	}
	s.mu.Unlock()
	if err := stepspec.WriteJSON(filepath.Join(s.rec.StepDir, stepspec.SpecFile), runSpec, 0o644); err != nil {
		a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}
	if s.ctx.Err() != nil {
		a.finishStopped(s, spec, ex, "before it started")
		return
	}
	stdin, err := json.Marshal(stepspec.Secrets{Variables: secrets.runnerVariables(), StepKey: secrets.StepKey})
	if err != nil {
		a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}
	// Recorded before the start: a crash between the two must not run it again.
	s.mu.Lock()
	s.rec.RunnerStarted = true
	s.rec.State = pb.StepState_STEP_STATE_RUNNING
	s.rec.StartedAt = time.Now().UTC()
	s.log = newRunnerLog(filepath.Join(s.rec.StepDir, stepspec.OutputLog), first)
	s.persistLocked()
	s.notifyLocked()
	s.mu.Unlock()
	if err := ex.Start(a.ctx, spec, stdin); err != nil {
		a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
		return
	}
	log.Debug("runner started")
	a.follow(s, ex, spec, req)
}

// follow tails the runner's log until the runner has exited, then finishes
// the step from result.json.
func (a *Agent) follow(s *step, ex executor.Executor, spec *executor.Spec, req *pb.StartStepRequest) {
	s.mu.Lock()
	if s.log == nil {
		s.log = newRunnerLog(filepath.Join(s.rec.StepDir, stepspec.OutputLog), s.firstRunnerSeqLocked())
	}
	rl := s.log
	s.mu.Unlock()

	exited := make(chan executor.Exit, 1)
	go func() {
		for {
			exit, err := ex.Wait(a.ctx, spec)
			if err == nil || a.ctx.Err() != nil {
				exited <- exit
				return
			}
			a.log.Warn("waiting for the runner failed; retrying", "ticket", s.rec.Ticket, "error", err)
			time.Sleep(time.Second)
		}
	}()
	// A stop (cancel or timeout) TERMs the runner, which passes it on and
	// enforces the grace; the agent KILLs only if the runner itself hangs.
	var killTimer <-chan time.Time
	stopCh := s.ctx.Done()
	interval := followFast
	var exit executor.Exit
	for {
		n, err := rl.poll(s.onEvent)
		a.metrics.logLines.Add(float64(n))
		if n > 0 {
			s.mu.Lock()
			s.notifyLocked()
			s.mu.Unlock()
			interval = followFast
		} else if interval < followIdle {
			interval *= 2
		}
		if err != nil {
			a.log.Error("runner log unreadable", "ticket", s.rec.Ticket, "error", err)
		}
		select {
		case exit = <-exited:
			goto ended
		case <-stopCh:
			stopCh = nil
			s.mu.Lock()
			asked := s.stopReason != pb.Outcome_OUTCOME_UNSPECIFIED
			s.mu.Unlock()
			if !asked {
				// The agent is shutting down, not stopping the step: the
				// runner goes on and the next agent process follows it.
				return
			}
			grace := req.GetCancelGrace().AsDuration()
			if grace <= 0 {
				grace = a.cfg.DefaultGrace
			}
			s.mu.Lock()
			s.stopGrace = grace
			s.mu.Unlock()
			if err := ex.Signal(a.ctx, spec, syscall.SIGTERM); err != nil {
				a.log.Warn("could not TERM the step", "ticket", s.rec.Ticket, "error", err)
			}
			killTimer = time.After(grace + killMargin)
		case <-killTimer:
			killTimer = nil
			s.mu.Lock()
			s.agentKilled = true
			s.mu.Unlock()
			s.agentLog("the step did not end within the grace period; killing it")
			if err := ex.Signal(a.ctx, spec, syscall.SIGKILL); err != nil {
				a.log.Warn("could not KILL the step", "ticket", s.rec.Ticket, "error", err)
			}
		case <-time.After(interval):
		}
	}
ended:
	if a.ctx.Err() != nil {
		return // the agent is shutting down; the next one follows on
	}
	if s.ctx.Err() != nil {
		// Stopped: what the script left behind (a daemon that left its
		// process group) goes with it.
		if err := ex.Signal(a.ctx, spec, syscall.SIGKILL); err != nil {
			a.log.Warn("could not KILL what the step left", "ticket", s.rec.Ticket, "error", err)
		}
	}
	var result stepspec.Result
	resErr := stepspec.ReadJSON(filepath.Join(s.rec.StepDir, stepspec.ResultFile), &result)
	// Everything the runner wrote is in output.log once result.json exists,
	// unless the runner says writing it failed; then what is there is all.
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, err := rl.poll(s.onEvent)
		a.metrics.logLines.Add(float64(n))
		if err != nil || resErr != nil || result.RunnerError || rl.lastSeq() >= result.LastSequence || time.Now().After(deadline) {
			break
		}
		time.Sleep(followFast)
	}
	rl.close() // all is read; reads open their own handle
	a.finishRun(s, spec, exit, &result, resErr)
}

// finishRun decides the outcome of a step whose runner has exited.
func (a *Agent) finishRun(s *step, spec *executor.Spec, exit executor.Exit, result *stepspec.Result, resErr error) {
	s.mu.Lock()
	stopReason, stopDetail := s.stopReason, s.stopDetail
	s.mu.Unlock()
	var code *int32
	signal := ""
	outcome := pb.Outcome_OUTCOME_FAILED
	reason := ""
	switch {
	case resErr == nil:
		c := int32(result.ExitCode)
		code, signal = &c, result.Signal
		switch {
		case stopReason != pb.Outcome_OUTCOME_UNSPECIFIED:
			outcome, reason = stopReason, stopDetail+": "+s.stopEnding(result.ExitCode, signal)
		case result.RunnerError:
			outcome, reason = pb.Outcome_OUTCOME_AGENT_ERROR, "the step runner failed: "+result.Message
		case result.ExitCode == 0:
			// The script's resultMessage, if any, is the reason it
			// succeeded with; its log already shows it.
			outcome, reason = pb.Outcome_OUTCOME_SUCCEEDED, result.ResultMessage
		default:
			reason = fmt.Sprintf("the script exited with code %d", result.ExitCode)
			if signal != "" {
				reason = fmt.Sprintf("the script was ended by %s", signal)
			}
			if result.Message != "" {
				reason = result.Message
			}
		}
	case errors.Is(resErr, fs.ErrNotExist):
		// The runner died without its exit record.
		if exit.Code >= 0 {
			c := int32(exit.Code)
			code = &c
		}
		signal = exit.Signal
		switch {
		case stopReason != pb.Outcome_OUTCOME_UNSPECIFIED:
			outcome, reason = stopReason, stopDetail+": "+s.stopEndingNoRecord(exit.Signal)
		case exit.OOMKilled:
			reason = "the step's container ran out of memory and was killed"
		default:
			outcome = pb.Outcome_OUTCOME_LOST
			reason = fmt.Sprintf("the step runner ended without an exit record (exit code %d)", exit.Code)
			if exit.Vanished {
				reason = "the step runner left no exit record"
			}
			if exit.Detail != "" {
				reason += ": " + exit.Detail
			}
		}
	default:
		outcome, reason = pb.Outcome_OUTCOME_AGENT_ERROR, resErr.Error()
	}
	if exit.EngineInterrupted && stopReason == pb.Outcome_OUTCOME_UNSPECIFIED && outcome != pb.Outcome_OUTCOME_SUCCEEDED {
		// Say why the script was stopped: the engine stops containers when it stops.
		reason = fmt.Sprintf("the Docker Engine went away while the step ran and stopped its container (exit code %d recorded); %s", exit.Code, reason)
	} else if exit.StoppedOutside && stopReason == pb.Outcome_OUTCOME_UNSPECIFIED {
		reason = fmt.Sprintf("the step's container was stopped from outside the agent (%s, e.g. docker stop); %s", exit.Signal, reason)
	}
	if reason != "" && outcome != pb.Outcome_OUTCOME_FAILED && outcome != pb.Outcome_OUTCOME_SUCCEEDED {
		s.agentLog(reason)
	}
	a.finish(s, spec, outcome, code, signal, reason)
}

// finishStopped ends a step stopped before its runner started.
func (a *Agent) finishStopped(s *step, spec *executor.Spec, ex executor.Executor, when string) {
	s.mu.Lock()
	outcome, detail := s.stopReason, s.stopDetail
	s.mu.Unlock()
	if outcome == pb.Outcome_OUTCOME_UNSPECIFIED {
		return // the agent is shutting down: the next process resumes it
	}
	reason := detail + " " + when
	s.agentLog(reason)
	a.finish(s, spec, outcome, nil, "", reason)
}

// finish records the step's end. Idempotent.
func (a *Agent) finish(s *step, spec *executor.Spec, outcome pb.Outcome, code *int32, signal, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec.State == pb.StepState_STEP_STATE_COMPLETE {
		return
	}
	if s.rec.RunnerStarted {
		s.rec.RunnerLast = s.firstRunnerSeqLocked() - 1
		if s.log != nil {
			s.rec.RunnerLast = s.log.lastSeq()
		}
	}
	s.rec.PostLines = append(s.rec.PostLines, s.pending...)
	s.pending = nil
	s.rec.State = pb.StepState_STEP_STATE_COMPLETE
	s.rec.Outcome, s.rec.ExitCode, s.rec.Signal, s.rec.Reason = outcome, code, signal, reason
	s.rec.FinishedAt = time.Now().UTC()
	s.finalizeArtifactsLocked()
	s.persistLocked()
	s.notifyLocked()
	s.secrets = nil
	s.completeOnce.Do(func() { close(s.done) })
	a.metrics.stepFinished(outcome, s.rec.FinishedAt.Sub(s.rec.CreatedAt))
	a.log.Info("step complete", "ticket", s.rec.Ticket, "outcome", outcome, "exit_code", derefCode(code), "reason", reason)
}

func derefCode(c *int32) any {
	if c == nil {
		return "none"
	}
	return *c
}

// stop asks a step to end with outcome (CANCELLED or TIMED_OUT). The first
// reason wins; a finished step is left alone.
func (a *Agent) stop(s *step, outcome pb.Outcome, detail string) {
	s.mu.Lock()
	if s.rec.State == pb.StepState_STEP_STATE_COMPLETE || s.stopReason != pb.Outcome_OUTCOME_UNSPECIFIED {
		s.mu.Unlock()
		return
	}
	s.stopReason, s.stopDetail = outcome, detail
	s.mu.Unlock()
	s.agentLog(detail + ": stopping the step")
	s.cancel()
}

func (a *Agent) setState(s *step, st pb.StepState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec.State == st {
		return
	}
	s.rec.State = st
	s.persistLocked()
	s.notifyLocked()
}

// onEvent applies a service message record of the runner.
func (s *step) onEvent(_ uint64, ev steplog.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ev.Type {
	case "setVariable":
		v := outputVariable{Name: ev.Name, Sensitive: ev.Sensitive}
		if ev.Sensitive {
			if s.secrets == nil {
				return
			}
			plain, err := steplog.OpenValue(s.secrets.StepKey, ev.Value)
			if err != nil {
				return
			}
			sealed, err := s.a.keys.seal([]byte(plain))
			if err != nil {
				return
			}
			v.SealedValue = sealed
		} else {
			v.Value = ev.Value
		}
		// An index by name, so that a flood of setVariable stays linear.
		if s.varIndex == nil {
			s.varIndex = make(map[string]int, len(s.rec.OutputVariables))
			for i, ov := range s.rec.OutputVariables {
				s.varIndex[ov.Name] = i
			}
		}
		if i, ok := s.varIndex[v.Name]; ok {
			s.rec.OutputVariables[i] = v
			return
		}
		s.varIndex[v.Name] = len(s.rec.OutputVariables)
		s.rec.OutputVariables = append(s.rec.OutputVariables, v)
	case "createArtifact":
		work := filepath.Join(s.rec.StepDir, stepspec.WorkDir)
		rel, err := filepath.Rel(work, filepath.Clean(ev.Path))
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
			s.pending = append(s.pending, agentLine{Time: time.Now().UTC(), Text: fmt.Sprintf("artifact %s refused: it is outside the workspace", ev.Path)})
			return
		}
		name := ev.Name
		if name == "" {
			name = filepath.Base(rel)
		}
		s.rec.Artifacts = append(s.rec.Artifacts, artifact{Name: name, Path: rel})
	}
}

// execSpec builds the executor's view of the step.
func (a *Agent) execSpec(s *step, req *pb.StartStepRequest, secrets *stepSecrets) *executor.Spec {
	spec := &executor.Spec{Ticket: s.rec.Ticket, StepDir: s.rec.StepDir}
	if c := req.GetExecution().GetContainer(); c != nil {
		policy, _ := pullPolicy(c.GetPullPolicy())
		cs := &executor.ContainerSpec{
			Image: c.GetImage(), Policy: policy, Platform: c.GetPlatform(),
			MemoryBytes: req.GetLimits().GetMemoryBytes(), NanoCPUs: req.GetLimits().GetNanoCpus(), PidsLimit: req.GetLimits().GetPidsLimit(),
		}
		if cr := c.GetCredentials(); cr != nil {
			cs.Credentials = registry.Credentials{Username: cr.GetUsername(), Password: secrets.RegistryPwd, IdentityToken: secrets.RegistryTok}
			cs.CredentialsSource = "inline credentials"
			if cr.GetUsername() != "" {
				cs.CredentialsSource = fmt.Sprintf("inline credentials of %q", cr.GetUsername())
			}
		}
		if cs.Credentials.Anonymous() {
			// A feed, or the worker's own Docker credentials.
			creds, source, err := a.credentials(a.ctx, c)
			if err == nil {
				cs.Credentials, cs.CredentialsSource = creds, source
			} else {
				a.log.Warn("no credentials for the step's image", "ticket", s.rec.Ticket, "error", err)
			}
		}
		spec.Container = cs
		if req.GetTaskId() != "" {
			spec.Labels = map[string]string{"io.stevedore.task": req.GetTaskId()}
		}
	}
	return spec
}

func pullPolicy(p pb.PullPolicy) (registry.PullPolicy, error) {
	switch p {
	case pb.PullPolicy_PULL_POLICY_UNSPECIFIED:
		return registry.PullDefault, nil
	case pb.PullPolicy_PULL_POLICY_ALWAYS:
		return registry.PullAlways, nil
	case pb.PullPolicy_PULL_POLICY_IF_NOT_PRESENT:
		return registry.PullIfNotPresent, nil
	case pb.PullPolicy_PULL_POLICY_NEVER:
		return registry.PullNever, nil
	}
	return 0, fmt.Errorf("unknown pull policy %v", p)
}

func syntaxName(s pb.Syntax) string {
	switch s {
	case pb.Syntax_SYNTAX_SH:
		return stepspec.SyntaxSh
	case pb.Syntax_SYNTAX_PYTHON:
		return stepspec.SyntaxPython
	}
	return stepspec.SyntaxBash
}

// openSecrets decrypts the step's secrets document from the journal.
func (a *Agent) openSecrets(s *step) (*stepSecrets, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets != nil {
		return s.secrets, nil
	}
	plain, err := a.keys.open(s.rec.Sealed)
	if err != nil {
		return nil, err
	}
	sec := &stepSecrets{}
	if err := json.Unmarshal(plain, sec); err != nil {
		return nil, fmt.Errorf("step secrets: %w", err)
	}
	s.secrets = sec
	return sec, nil
}

func (s *stepSecrets) runnerVariables() []stepspec.Variable {
	out := make([]stepspec.Variable, 0, len(s.Variables))
	for _, v := range s.Variables {
		out = append(out, stepspec.Variable{Name: v.Name, Value: v.Value})
	}
	return out
}

// prepareStepDir writes the script and the request's files. Idempotent.
func (a *Agent) prepareStepDir(s *step, req *pb.StartStepRequest) error {
	dir := s.rec.StepDir
	work := filepath.Join(dir, stepspec.WorkDir)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("step dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, stepspec.ScriptFile), []byte(req.GetScript().GetBody()), 0o644); err != nil {
		return fmt.Errorf("script: %w", err)
	}
	for _, f := range req.GetFiles() {
		path := filepath.Join(work, filepath.Clean("/"+f.GetPath()))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("file %s: %w", f.GetPath(), err)
		}
		mode := os.FileMode(f.GetMode() & 0o777)
		if mode == 0 {
			mode = 0o644
		}
		content := f.GetContent()
		if id := f.GetFileId(); id != "" {
			b, err := os.ReadFile(a.uploadPath(id))
			if err != nil {
				return fmt.Errorf("file %s: upload %s: %w", f.GetPath(), id, err)
			}
			content = b
		}
		if err := os.WriteFile(path, content, mode); err != nil {
			return fmt.Errorf("file %s: %w", f.GetPath(), err)
		}
	}
	return nil
}
