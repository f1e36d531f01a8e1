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
		SubPath   string `yaml:"subPath"`
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

// podSpec is what this test runs of a rendered pod.
type podSpec struct {
	InitContainers []podContainer `yaml:"initContainers"`
	Containers     []podContainer `yaml:"containers"`
}

// render renders one of the chart's Deployments alone (helm template, with
// the helm `make setup` builds) and returns its pod.
func render(t *testing.T, template string, set ...string) podSpec {
	t.Helper()
	where, err := exec.Command("bash", "../../scripts/helm.sh", "--where").Output()
	helm := strings.TrimSpace(string(where))
	if err == nil {
		_, err = os.Stat(helm)
	}
	if err != nil {
		testenv.Unavailable(t, "helm, which scripts/helm.sh builds: %v", err)
	}
	args := []string{"template", "t", "../helm/stevedore", "--kube-version", "1.29.0", "--show-only", "templates/" + template}
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
				Spec podSpec `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&d); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("the rendered %s: %v\n%s", template, err, out)
	}
	return d.Spec.Template.Spec
}

// renderPool returns the rendered pool's engine sidecar and agent.
func renderPool(t *testing.T, set ...string) (engine, agent podContainer) {
	t.Helper()
	spec := render(t, "pool-deployment.yaml", set...)
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one engine sidecar and one agent, rendered %+v", spec)
	}
	return spec.InitContainers[0], spec.Containers[0]
}

// envOpts are docker run's -e options for c's rendered environment, the
// Secrets' values from secrets by key.
func envOpts(t *testing.T, c podContainer, podName string, secrets map[string]string) []string {
	t.Helper()
	var opts []string
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = podName
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			var ok bool
			if v, ok = secrets[e.ValueFrom.SecretKeyRef.Key]; !ok {
				t.Fatalf("env %s: no value for the Secret key %s", e.Name, e.ValueFrom.SecretKeyRef.Key)
			}
		case e.ValueFrom != nil:
			t.Fatalf("env %s: a source this test does not provide", e.Name)
		}
		opts = append(opts, "-e", e.Name+"="+v)
	}
	return opts
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
	run = append(run, envOpts(t, agent, agentName, map[string]string{"STEVEDORE_REGISTRATION_TOKEN": token})...)
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

// The chart's server pod, run as a pod runs it: the server's image with the
// rendered command, arguments and environment (the Secrets' values given
// here), the data dir and the identity Secret's files mounted where the
// chart mounts them, and the built-in worker without an engine. It answers
// its probe's GET /healthz, presents the identity the Secret holds (whose
// thumbprint the pool pins), prints the master key from its Secret for the
// backup, and runs a host step on its built-in worker.
func TestChartServerPod(t *testing.T) {
	tag := serverImage(t)
	bin := testenv.Binary(t)
	ids := t.TempDir()
	thumbprint, err := exec.Command(bin, "cert", "--state-dir", ids).Output()
	if err != nil {
		t.Fatalf("stevedore cert: %v", err)
	}
	spec := render(t, "server-deployment.yaml", "server.identity.existingSecret=server-identity",
		"server.builtinWorker.enabled=true", "server.builtinWorker.engine=none")
	c := spec.Containers[0]
	const masterKey = "Y2hhcnQtc2VydmVyLXBvZA==" // chart-server-pod
	data, dataDir := t.TempDir(), ""
	var opts []string
	for _, m := range c.VolumeMounts {
		switch m.Name {
		case "data":
			dataDir = m.MountPath
			opts = append(opts, "-v", data+":"+m.MountPath)
		case "identity":
			opts = append(opts, "-v", ids+"/"+m.SubPath+":"+m.MountPath+":ro")
		default:
			t.Fatalf("volume %s: not one this test provides", m.Name)
		}
	}
	opts = append(opts, envOpts(t, c, "", map[string]string{"MASTER_KEY": masterKey, "ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "image-test-password"})...)
	opts = append(opts, "--entrypoint", c.Command[0])
	s := startServer(t, tag, opts, append(c.Command[1:], c.Args...)...)
	s.waitAPI(t)

	// Their stdout alone: the one line each prints there.
	stdout := func(args ...string) string {
		out, err := exec.Command("docker", append([]string{"exec", s.name}, args...)...).Output()
		if err != nil {
			t.Errorf("docker exec %s: %v", strings.Join(args, " "), err)
		}
		return string(out)
	}
	if got := stdout("stevedore", "cert", "--state-dir", dataDir); got != string(thumbprint) {
		t.Errorf("the server's thumbprint %q; want the Secret's identity's %q", got, thumbprint)
	}
	if got := stdout("stevedore", "server", "show-master-key"); got != masterKey+"\n" {
		t.Errorf("show-master-key in the pod: %q; want %q", got, masterKey)
	}
	s.runSteps(t, bin, []stepCase{
		{"host step on the built-in worker", []string{"--script", `echo "host step with DISABLE_DIND=$DISABLE_DIND"`}, 0, "host step with DISABLE_DIND=Y"},
	})
}
