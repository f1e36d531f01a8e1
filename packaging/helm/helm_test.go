// Package helm_test checks the chart in packaging/helm/stevedore with the
// real helm (scripts/helm.sh, which `make setup` runs): helm lint --strict
// and helm template over the value sets that matter, and what the rendered
// objects say about ports, Secrets, the drain and the engine's privileges.
package helm_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"

	"stevedore/internal/testenv"
)

const chart = "stevedore"

// kubeVersion is the oldest the chart allows (Chart.yaml's kubeVersion: its
// native sidecar); helm's own default may be older.
const kubeVersion = "1.29.0"

const thumbprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

var helmOnce = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("bash", "../../scripts/helm.sh", "--where").Output()
	if err != nil {
		return "", err
	}
	path := strings.TrimSpace(string(out))
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	return path, nil
})

// helm is the helm that `make setup` installs, where scripts/helm.sh says.
func helm(t *testing.T) string {
	t.Helper()
	path, err := helmOnce()
	if err != nil {
		testenv.Unavailable(t, "helm, which scripts/helm.sh builds: %v", err)
	}
	return path
}

func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(helm(t), args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func setArgs(set []string) []string {
	var args []string
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

// The parts of the rendered objects the tests look at.
type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name        string            `yaml:"name"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Strategy struct {
			Type string `yaml:"type"`
		} `yaml:"strategy"`
		AccessModes []string `yaml:"accessModes"`
		Ports       []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
	InitContainers                []container `yaml:"initContainers"`
	Containers                    []container `yaml:"containers"`
	Volumes                       []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
			Type string `yaml:"type"`
		} `yaml:"hostPath"`
		EmptyDir *struct{} `yaml:"emptyDir"`
		Secret   *struct {
			SecretName string `yaml:"secretName"`
		} `yaml:"secret"`
		PVC *struct {
			ClaimName string `yaml:"claimName"`
		} `yaml:"persistentVolumeClaim"`
	} `yaml:"volumes"`
}

type container struct {
	Name          string   `yaml:"name"`
	Image         string   `yaml:"image"`
	Command       []string `yaml:"command"`
	Args          []string `yaml:"args"`
	RestartPolicy string   `yaml:"restartPolicy"`
	Env           []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	SecurityContext *struct {
		Privileged bool `yaml:"privileged"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
	Lifecycle *struct {
		PreStop *struct {
			Exec *struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

func (c container) privileged() bool { return c.SecurityContext != nil && c.SecurityContext.Privileged }

// env returns the variable's value, or "secret:NAME/KEY" when it comes
// from a Secret, and whether it is set at all.
func (c container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key, true
		}
		return e.Value, true
	}
	return "", false
}

func (c container) mount(name string) (path, subPath string, ok bool) {
	for _, m := range c.VolumeMounts {
		if m.Name == name {
			return m.MountPath, m.SubPath, true
		}
	}
	return "", "", false
}

type rendered []object

func (r rendered) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range r {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered; have %v", kind, name, r.names())
	return object{}
}

func (r rendered) has(kind, name string) bool {
	return slices.ContainsFunc(r, func(o object) bool { return o.Kind == kind && o.Metadata.Name == name })
}

func (r rendered) names() []string {
	var n []string
	for _, o := range r {
		n = append(n, o.Kind+"/"+o.Metadata.Name)
	}
	return n
}

func parse(t *testing.T, manifests string) rendered {
	t.Helper()
	var out rendered
	dec := yaml.NewDecoder(strings.NewReader(manifests))
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("the rendered YAML does not parse: %v\n%s", err, manifests)
		}
		if o.Kind != "" {
			out = append(out, o)
		}
	}
}

// Release "t": the chart's objects are t-stevedore-….
const (
	server    = "t-stevedore-server"
	pool      = "t-stevedore-pool"
	secrets   = "t-stevedore-secrets"
	masterKey = "t-stevedore-master-key"
)

func only(t *testing.T, cs []container) container {
	t.Helper()
	if len(cs) != 1 {
		t.Fatalf("%d containers; want 1", len(cs))
	}
	return cs[0]
}

func wantEnv(t *testing.T, c container, name, want string) {
	t.Helper()
	if got, ok := c.env(name); !ok || got != want {
		t.Errorf("%s: %s=%q (set %v); want %q", c.Name, name, got, ok, want)
	}
}

func wantNoEnv(t *testing.T, c container, name string) {
	t.Helper()
	if got, ok := c.env(name); ok {
		t.Errorf("%s: %s=%q; want it unset", c.Name, name, got)
	}
}

func wantArgs(t *testing.T, c container, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(c.Args, w) {
			t.Errorf("%s: args %q lack %q", c.Name, c.Args, w)
		}
	}
}

var poolValues = []string{"workerPool.enabled=true", "server.thumbprint=" + thumbprint, "server.identity.existingSecret=server-identity",
	"workerPool.pools={linux,deploy}", "workerPool.labels.zone=a", "workerPool.terminationGracePeriodSeconds=1800"}

// The chart passes helm lint --strict and renders, with each value set,
// what the server and the agents need; nothing is privileged but a Docker
// in Docker engine, and nothing mounts the node's engine but host mode.
func TestChart(t *testing.T) {
	cases := []struct {
		name  string
		set   []string
		check func(t *testing.T, r rendered)
	}{
		{"defaults", nil, func(t *testing.T, r rendered) {
			d := r.get(t, "Deployment", server)
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != "Recreate" {
				t.Errorf("replicas %v, strategy %q; want 1 and Recreate (one server on a bbolt data dir)", d.Spec.Replicas, d.Spec.Strategy.Type)
			}
			c := only(t, d.Spec.Template.Spec.Containers)
			ports := map[string]int{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if ports["http"] != 8080 || ports["polling"] != 10943 {
				t.Errorf("container ports %v; want http 8080 and polling 10943", ports)
			}
			svc := r.get(t, "Service", server)
			sp := map[string]int{}
			for _, p := range svc.Spec.Ports {
				sp[p.TargetPort] = p.Port
			}
			if sp["http"] != 8080 || sp["polling"] != 10943 {
				t.Errorf("service ports %v; want 8080 → http and 10943 → polling", sp)
			}
			for _, p := range []*probe{c.ReadinessProbe, c.LivenessProbe} {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != "http" {
					t.Errorf("probe %+v; want GET /healthz on http", p)
				}
			}
			wantEnv(t, c, "MASTER_KEY", "secret:"+masterKey+"/MASTER_KEY")
			wantEnv(t, c, "ADMIN_USERNAME", "secret:"+secrets+"/ADMIN_USERNAME")
			wantEnv(t, c, "ADMIN_PASSWORD", "secret:"+secrets+"/ADMIN_PASSWORD")
			wantNoEnv(t, c, "ADMIN_EMAIL")
			wantNoEnv(t, c, "DB_CONNECTION_STRING")
			wantNoEnv(t, c, "STEVEDORE_REGISTRATION_TOKEN")
			if slices.Contains(c.Args, "--builtin-worker") {
				t.Errorf("args %q: the built-in worker is off by default", c.Args)
			}
			mk := r.get(t, "Secret", masterKey)
			if mk.Metadata.Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("the master key's Secret is not kept on uninstall: %v", mk.Metadata.Annotations)
			}
			// Data holds base64 of MASTER_KEY, itself base64 of 16 bytes.
			v, err := base64.StdEncoding.DecodeString(mk.Data["MASTER_KEY"])
			if err == nil {
				v, err = base64.StdEncoding.DecodeString(string(v))
			}
			if err != nil || len(v) != 16 {
				t.Errorf("generated MASTER_KEY %q: want the base64 of 16 bytes (%v)", mk.Data["MASTER_KEY"], err)
			}
			if pvc := r.get(t, "PersistentVolumeClaim", server+"-data"); !slices.Equal(pvc.Spec.AccessModes, []string{"ReadWriteOnce"}) {
				t.Errorf("data claim access modes %v", pvc.Spec.AccessModes)
			}
			if r.has("Deployment", pool) {
				t.Error("a worker pool by default")
			}
		}},
		{"replicas 3", []string{"server.replicas=3", "server.database.connectionString=postgres://db/stevedore",
			"server.identity.existingSecret=server-identity", "server.persistence.accessModes={ReadWriteMany}"}, func(t *testing.T, r rendered) {
			d := r.get(t, "Deployment", server)
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 || d.Spec.Strategy.Type == "Recreate" {
				t.Errorf("replicas %v, strategy %q; want 3, rolling", d.Spec.Replicas, d.Spec.Strategy.Type)
			}
			c := only(t, d.Spec.Template.Spec.Containers)
			wantEnv(t, c, "DB_CONNECTION_STRING", "secret:"+secrets+"/DB_CONNECTION_STRING")
			for _, f := range []string{"identity.crt", "identity.key"} {
				found := false
				for _, m := range c.VolumeMounts {
					found = found || (m.Name == "identity" && m.SubPath == f && m.MountPath == "/var/lib/stevedore-server/"+f)
				}
				if !found {
					t.Errorf("the identity's %s is not mounted into the data dir: %+v", f, c.VolumeMounts)
				}
			}
			if s := r.get(t, "Secret", secrets); s.Data["DB_CONNECTION_STRING"] != base64.StdEncoding.EncodeToString([]byte("postgres://db/stevedore")) {
				t.Errorf("the chart's Secret holds DB_CONNECTION_STRING %q", s.Data["DB_CONNECTION_STRING"])
			}
		}},
		{"built-in worker, Docker in Docker", []string{"server.builtinWorker.enabled=true"}, func(t *testing.T, r rendered) {
			c := only(t, r.get(t, "Deployment", server).Spec.Template.Spec.Containers)
			wantArgs(t, c, "--builtin-worker", "--dind")
			wantNoEnv(t, c, "DISABLE_DIND")
			if p, _, ok := c.mount("engine"); !ok || p != "/var/lib/docker" {
				t.Errorf("the engine's data root is not a volume: %+v", c.VolumeMounts)
			}
		}},
		{"built-in worker, no engine", []string{"server.builtinWorker.enabled=true", "server.builtinWorker.engine=none"}, func(t *testing.T, r rendered) {
			c := only(t, r.get(t, "Deployment", server).Spec.Template.Spec.Containers)
			wantArgs(t, c, "--builtin-worker")
			if slices.Contains(c.Args, "--dind") {
				t.Errorf("args %q: --dind without an engine", c.Args)
			}
			wantEnv(t, c, "DISABLE_DIND", "Y")
		}},
		{"pool with Docker in Docker", poolValues, func(t *testing.T, r rendered) {
			d := r.get(t, "Deployment", pool)
			spec := d.Spec.Template.Spec
			a := checkAgent(t, r, spec)
			wantEnv(t, a, "STEVEDORE_STATE_DIR", "/var/lib/stevedore")
			wantEnv(t, a, "DOCKER_HOST", "unix:///run/stevedore-engine/docker.sock")
			e := only(t, spec.InitContainers)
			// A native sidecar: Kubernetes stops it after the agent drained.
			if e.RestartPolicy != "Always" || !e.privileged() {
				t.Errorf("engine: restartPolicy %q, privileged %v; want a privileged native sidecar", e.RestartPolicy, e.privileged())
			}
			if e.Image != "stevedore-server:dev" {
				t.Errorf("engine image %q; want the server's", e.Image)
			}
			for _, v := range []string{"state", "engine-socket"} {
				ap, _, aok := a.mount(v)
				ep, _, eok := e.mount(v)
				if !aok || !eok || ap != ep {
					t.Errorf("volume %s at %q in the agent and %q in the engine; want the same path in both", v, ap, ep)
				}
			}
		}},
		{"pool with the node's engine", append(slices.Clone(poolValues), "workerPool.engine.mode=host"), func(t *testing.T, r rendered) {
			spec := r.get(t, "Deployment", pool).Spec.Template.Spec
			a := checkAgent(t, r, spec)
			if len(spec.InitContainers) != 0 {
				t.Errorf("init containers %v in host mode", spec.InitContainers)
			}
			wantEnv(t, a, "DOCKER_HOST", "unix:///var/run/docker.sock")
			wantEnv(t, a, "STEVEDORE_STATE_DIR", "/var/lib/stevedore/$(POD_NAME)")
			for _, v := range spec.Volumes {
				if v.HostPath == nil {
					continue
				}
				p, _, _ := a.mount(v.Name)
				switch v.Name {
				case "engine-socket":
					if v.HostPath.Path != "/var/run/docker.sock" || v.HostPath.Type != "Socket" || p != "/var/run/docker.sock" {
						t.Errorf("socket %+v mounted at %q", v.HostPath, p)
					}
				case "state":
					// The node's engine mounts workspaces from the node's path.
					if p != v.HostPath.Path {
						t.Errorf("state dir %q on the node mounted at %q; want the same path", v.HostPath.Path, p)
					}
				}
			}
		}},
		{"existing Secrets", append(slices.Clone(poolValues), "server.masterKey.existingSecret=mk", "server.masterKey.secretKey=key",
			"server.admin.existingSecret=adm", "server.registrationToken.existingSecret=reg", "server.database.existingSecret=db",
			"workerPool.masterKey.existingSecret=agent-mk", "server.admin.email=ops@example.com"), func(t *testing.T, r rendered) {
			c := only(t, r.get(t, "Deployment", server).Spec.Template.Spec.Containers)
			wantEnv(t, c, "MASTER_KEY", "secret:mk/key")
			wantEnv(t, c, "ADMIN_USERNAME", "secret:adm/ADMIN_USERNAME")
			wantEnv(t, c, "ADMIN_PASSWORD", "secret:adm/ADMIN_PASSWORD")
			// Not a secret: a plain value, beside the admin's Secret.
			wantEnv(t, c, "ADMIN_EMAIL", "ops@example.com")
			wantEnv(t, c, "STEVEDORE_REGISTRATION_TOKEN", "secret:reg/STEVEDORE_REGISTRATION_TOKEN")
			wantEnv(t, c, "DB_CONNECTION_STRING", "secret:db/DB_CONNECTION_STRING")
			a := only(t, r.get(t, "Deployment", pool).Spec.Template.Spec.Containers)
			wantEnv(t, a, "STEVEDORE_REGISTRATION_TOKEN", "secret:reg/STEVEDORE_REGISTRATION_TOKEN")
			wantEnv(t, a, "MASTER_KEY", "secret:agent-mk/MASTER_KEY")
			if r.has("Secret", secrets) || r.has("Secret", masterKey) {
				t.Errorf("the chart makes Secrets of its own beside existing ones: %v", r.names())
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := setArgs(c.set)
			if out, stderr, err := runHelm(t, append([]string{"lint", "--strict", "--kube-version", kubeVersion, chart}, args...)...); err != nil {
				t.Fatalf("helm lint --strict: %v\n%s%s", err, out, stderr)
			}
			out, stderr, err := runHelm(t, append([]string{"template", "t", chart, "--kube-version", kubeVersion}, args...)...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, stderr)
			}
			r := parse(t, out)
			c.check(t, r)
			checkPrivileges(t, r, c.set)
		})
	}
}

// checkAgent checks what every pool's agent needs, and returns it.
func checkAgent(t *testing.T, r rendered, spec podSpec) container {
	t.Helper()
	a := only(t, spec.Containers)
	wantArgs(t, a, "--server="+server+":10943", "--server-thumbprint="+thumbprint, "--register=http://"+server+":8080",
		"--pool=linux", "--pool=deploy", "--label=zone=a")
	if tg := spec.TerminationGracePeriodSeconds; tg == nil || *tg != 1800 {
		t.Errorf("terminationGracePeriodSeconds %v; want 1800, from the values", tg)
	}
	if a.Lifecycle == nil || a.Lifecycle.PreStop == nil || a.Lifecycle.PreStop.Exec == nil ||
		!strings.Contains(strings.Join(a.Lifecycle.PreStop.Exec.Command, " "), "/usr/local/bin/stevedore agent drain --state-dir \"$STEVEDORE_STATE_DIR\"") {
		t.Errorf("preStop %+v; want the drain of the agent's state dir", a.Lifecycle)
	}
	if _, ok := a.env("STEVEDORE_STATE_DIR"); !ok {
		t.Error("no STEVEDORE_STATE_DIR, which the drain reads")
	}
	// Both ends use the one token.
	tok, _ := a.env("STEVEDORE_REGISTRATION_TOKEN")
	srv := only(t, r.get(t, "Deployment", server).Spec.Template.Spec.Containers)
	if stok, _ := srv.env("STEVEDORE_REGISTRATION_TOKEN"); !strings.HasPrefix(tok, "secret:") || tok != stok {
		t.Errorf("registration token: the agent's %q, the server's %q; want the same Secret", tok, stok)
	}
	if a.ReadinessProbe == nil || a.ReadinessProbe.HTTPGet == nil || a.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("agent readiness %+v; want GET /healthz on its metrics port", a.ReadinessProbe)
	}
	return a
}

// checkPrivileges: privileged exactly where Docker in Docker runs, the
// node's engine socket mounted only in host mode.
func checkPrivileges(t *testing.T, r rendered, set []string) {
	t.Helper()
	setTo := func(k, v string) bool { return slices.Contains(set, k+"="+v) }
	poolOn := setTo("workerPool.enabled", "true")
	host := setTo("workerPool.engine.mode", "host")
	builtinDinD := setTo("server.builtinWorker.enabled", "true") && !setTo("server.builtinWorker.engine", "none")
	for _, o := range r {
		if o.Kind != "Deployment" {
			continue
		}
		spec := o.Spec.Template.Spec
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			want := (o.Metadata.Name == pool && c.Name == "engine" && poolOn && !host) || (o.Metadata.Name == server && builtinDinD)
			if c.privileged() != want {
				t.Errorf("%s/%s privileged %v; want %v", o.Metadata.Name, c.Name, c.privileged(), want)
			}
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil && !(o.Metadata.Name == pool && host) {
				t.Errorf("%s: hostPath %s outside host mode", o.Metadata.Name, v.HostPath.Path)
			}
		}
	}
}

// Value sets that cannot work fail helm template, saying what to set.
func TestChartRefuses(t *testing.T) {
	cases := []struct {
		name string
		set  []string
		want string
	}{
		{"an unknown engine mode", append(slices.Clone(poolValues), "workerPool.engine.mode=podman"), `workerPool.engine.mode "podman": want "dind"`},
		{"an unknown built-in engine", []string{"server.builtinWorker.engine=host"}, `server.builtinWorker.engine "host": want "dind"`},
		{"replicas without a database", []string{"server.replicas=2", "server.identity.existingSecret=id"}, "server.replicas > 1 needs server.database"},
		{"replicas without the shared identity", []string{"server.replicas=2", "server.database.existingSecret=db"}, "server.replicas > 1 needs server.identity.existingSecret"},
		{"replicas on a ReadWriteOnce volume", []string{"server.replicas=2", "server.database.existingSecret=db", "server.identity.existingSecret=id"}, "ReadWriteMany"},
		{"a pool without the server's thumbprint", []string{"workerPool.enabled=true", "server.identity.existingSecret=id"}, "workerPool needs server.thumbprint"},
		{"a pool without the server's identity", []string{"workerPool.enabled=true", "server.thumbprint=" + thumbprint}, "server.identity.existingSecret"},
		{"a pool without a server", append(slices.Clone(poolValues), "server.enabled=false"), "workerPool.serverAddress"},
		{"a pool of another server without its token", append(slices.Clone(poolValues), "server.enabled=false", "workerPool.serverAddress=ci:10943",
			"workerPool.registerURL=http://ci:8080"), "server.registrationToken.existingSecret or .value"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, err := runHelm(t, append([]string{"template", "t", chart, "--kube-version", kubeVersion}, setArgs(c.set)...)...)
			if err == nil {
				t.Fatalf("helm template accepted it:\n%s", out)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("helm template: %v\n%s\nwant a message with %q", err, stderr, c.want)
			}
		})
	}
}
