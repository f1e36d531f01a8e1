package container_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"stevedore/internal/testenv"
)

// podContainer is what this test runs of a rendered container.
type podContainer struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Key string `yaml:"key"`
			} `yaml:"secretKeyRef"`
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	StartupProbe struct {
		Exec struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"startupProbe"`
	Lifecycle struct {
		PreStop struct {
			Exec struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
}

// renderPool renders the chart's worker pool alone (helm template, with
// the helm `make setup` builds) and returns its engine sidecar and agent.
func renderPool(t *testing.T, set ...string) (engine, agent podContainer) {
	t.Helper()
	where, err := exec.Command("bash", "../../scripts/helm.sh", "--where").Output()
	helm := strings.TrimSpace(string(where))
	if err == nil {
		_, err = os.Stat(helm)
	}
	if err != nil {
		testenv.Unavailable(t, "helm (run `make setup`, which builds it with scripts/helm.sh): %v", err)
	}
	args := []string{"template", "t", "../helm/stevedore", "--kube-version", "1.29.0", "--show-only", "templates/pool-deployment.yaml"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(helm, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr.String())
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []podContainer `yaml:"initContainers"`
					Containers     []podContainer `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&d); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("the rendered pool: %v\n%s", err, out)
	}
	spec := d.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one engine sidecar and one agent, rendered:\n%s", out)
	}
	return spec.InitContainers[0], spec.Containers[0]
}

// The chart's Docker in Docker pool pod, run as a pod would run it: its
// engine sidecar (the server's image, privileged, the rendered command)
// and its agent (the agent's image, the rendered command, arguments and
// environment) share a network namespace and the rendered volumes; the
// agent registers with a server, runs a container step on the sidecar's
// engine (which pulls the image itself and mounts the workspace from the
// shared state dir), and the rendered preStop drains it.
func TestChartPoolPodDockerInDocker(t *testing.T) {
	testenv.RequireRegistry(t)
	serverTag, agentTag := serverImage(t), agentImage(t)
	bin := testenv.Binary(t)
	p := privileges(t, serverTag)
	const token = "chart-pod-test-registration-token"
	hs := startHostServer(t, bin, token)
	engine, agent := renderPool(t, "server.enabled=false", "workerPool.enabled=true", "workerPool.pools={chart-pod}",
		"workerPool.serverAddress="+hs.polling, "workerPool.registerURL=http://"+hs.http, "server.thumbprint="+hs.thumbprint,
		"server.registrationToken.existingSecret=registration", "workerPool.metricsPort=0")

	// The pod's emptyDirs. The engine's data root is a volume of the
	// engine's own, as overlay2 needs; the others are shared directories.
	suffix := randomSuffix()
	dataRoot := "stevedore-chart-pod-" + suffix
	volumes := map[string]string{}
	mounts := func(c podContainer) []string {
		var opts []string
		for _, m := range c.VolumeMounts {
			src := dataRoot
			if m.Name != "engine-data" {
				if volumes[m.Name] == "" {
					volumes[m.Name] = t.TempDir()
					os.Chmod(volumes[m.Name], 0o755)
				}
				src = volumes[m.Name]
			}
			opts = append(opts, "-v", src+":"+m.MountPath)
		}
		return opts
	}
	engineName, agentName := "stevedore-chart-engine-"+suffix, "stevedore-chart-agent-"+suffix
	t.Cleanup(func() {
		for _, n := range []string{agentName, engineName} {
			if t.Failed() {
				out, _ := exec.Command("docker", "logs", n).CombinedOutput()
				t.Logf("%s log:\n%s", n, out)
			}
			exec.Command("docker", "rm", "-f", "-v", n).Run()
		}
		exec.Command("docker", "volume", "rm", "-f", dataRoot).Run()
	})

	// The engine: the rendered command as the entrypoint, privileged (or
	// what this machine can give of it, whose shell then execs the command).
	run := append([]string{"run", "-d", "--name", engineName}, mounts(engine)...)
	if len(p.args) == 0 {
		run = append(append(run, p.opts...), "--entrypoint", engine.Command[0], serverTag)
		run = append(run, engine.Command[1:]...)
	} else {
		run = append(append(run, p.opts...), serverTag)
		run = append(append(run, p.args[:3]...), engine.Command...)
	}
	docker(t, run...)
	// The server and the registry, on the host's loopback, at the same
	// addresses on the pod's.
	relay(t, engineName, testenv.Registry, hs.http, hs.polling)

	// The agent starts once the sidecar's startup probe passes.
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if exec.Command("docker", append([]string{"exec", engineName}, engine.StartupProbe.Exec.Command...)...).Run() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine sidecar's startup probe %q does not pass", engine.StartupProbe.Exec.Command)
		}
	}

	// The agent, in the engine's network namespace as in a pod.
	run = []string{"run", "-d", "--name", agentName, "--network", "container:" + engineName}
	run = append(run, mounts(agent)...)
	for _, e := range agent.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = agentName
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Key == "STEVEDORE_REGISTRATION_TOKEN":
			v = token
		case e.ValueFrom != nil:
			t.Fatalf("env %s: a source this test does not provide", e.Name)
		}
		run = append(run, "-e", e.Name+"="+v)
	}
	run = append(run, "--entrypoint", agent.Command[0], agentTag)
	run = append(append(run, agent.Command[1:]...), agent.Args...)
	docker(t, run...)

	s := server{base: "http://" + hs.http, pool: "chart-pod"}
	s.runSteps(t, bin, []stepCase{
		{"container step on the sidecar's engine", append([]string{"--queue-timeout", "3m"}, containerStep(`echo "container step with $(python3 --version)"; exit 6`)...), 6, "container step with Python 3"},
	})

	t.Run("the rendered preStop drains the agent", func(t *testing.T) {
		pre := agent.Lifecycle.PreStop.Exec.Command
		if !slices.Contains(pre, "-c") {
			t.Fatalf("preStop %q", pre)
		}
		out, execErr := exec.Command("docker", append([]string{"exec", agentName}, pre...)...).CombinedOutput()
		if code := docker(t, "wait", agentName); code != "0" {
			t.Errorf("the agent exited %s after the drain; want 0 (preStop: %v %s)", code, execErr, out)
		}
		if logs, _ := exec.Command("docker", "logs", agentName).CombinedOutput(); !bytes.Contains(logs, []byte("drained; exiting")) {
			t.Errorf("the agent did not drain (preStop: %v %s)", execErr, out)
		}
	})
}
