package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v2"
)

const placeholderUpstream = "https://your-go-module-mirror.example"

// tool returns the path of an external tool, skipping the test when it is
// missing unless MODPROXY_REQUIRE_TOOLS=1.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("MODPROXY_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s not found and MODPROXY_REQUIRE_TOOLS=1", name)
		}
		t.Skipf("skipping: %s not installed (set MODPROXY_REQUIRE_TOOLS=1 to fail instead)", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtool(t *testing.T) {
	promtool := tool(t, "promtool")
	run(t, promtool, "check", "config", "prometheus/prometheus.yml")
	run(t, promtool, "check", "rules", "prometheus/rules.yml")

	// prometheus-native.yml is prometheus.yml plus settings that only newer
	// versions know. Check that it differs in nothing else, and let this
	// promtool check the rest of it.
	base := readYAML(t, "prometheus/prometheus.yml")
	native := readYAML(t, "prometheus/prometheus-native.yml")
	scs := native["scrape_configs"].([]any)
	sc := scs[0].(map[any]any)
	for _, k := range []string{"scrape_native_histograms", "always_scrape_classic_histograms"} {
		if sc[k] != true {
			t.Errorf("prometheus-native.yml: %s is %v, want true", k, sc[k])
		}
		delete(sc, k)
	}
	sc["static_configs"] = base["scrape_configs"].([]any)[0].(map[any]any)["static_configs"]
	if !reflect.DeepEqual(base, native) {
		t.Errorf("prometheus-native.yml differs from prometheus.yml beyond the histogram settings and target:\n%v\n%v", native, base)
	}
	out := run(t, promtool, "--version")
	if regexp.MustCompile(`version 3\.([89]|\d\d)`).MatchString(out) {
		run(t, promtool, "check", "config", "prometheus/prometheus-native.yml")
	} else {
		dir := t.TempDir()
		stripped, err := yaml.Marshal(native)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "prometheus.yml"), stripped)
		writeFile(t, filepath.Join(dir, "rules.yml"), readFile(t, "prometheus/rules.yml"))
		run(t, promtool, "check", "config", filepath.Join(dir, "prometheus.yml"))
	}
}

func TestSystemdUnit(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	unit := readFile(t, "modproxy.service")
	for _, want := range []string{
		"ExecStart=/usr/local/bin/modproxy serve --db ${STATE_DIRECTORY}/modproxy.db",
		"StateDirectory=modproxy", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
		"AmbientCapabilities=CAP_BPF CAP_NET_ADMIN",
		"CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN",
		"SystemCallFilter=@system-service bpf",
	} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("modproxy.service lacks %q", want)
		}
	}
	// verify wants ExecStart's binary to exist: point it at one that does.
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "modproxy.service")
	writeFile(t, path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/modproxy"), []byte(bin)))
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// docs splits a YAML file into its documents.
func docs(t *testing.T, path string) []map[any]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, path)))
	var out []map[any]any
	for {
		var m map[any]any
		if err := dec.Decode(&m); err != nil {
			if err.Error() == "EOF" {
				return out
			}
			t.Fatalf("%s: %v", path, err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
}

// get walks a parsed YAML value by map keys and list indexes.
func get(v any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := v.(map[any]any)
			if !ok {
				return nil
			}
			v = m[p]
		case int:
			l, ok := v.([]any)
			if !ok || p >= len(l) {
				return nil
			}
			v = l[p]
		}
	}
	return v
}

func TestKubernetes(t *testing.T) {
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	kinds := map[string]map[any]any{}
	for _, f := range files {
		for _, d := range docs(t, f) {
			kind, _ := d["kind"].(string)
			if kind == "" || d["apiVersion"] == nil {
				t.Errorf("%s: document without kind/apiVersion", f)
			}
			kinds[kind] = d
		}
	}
	for _, k := range []string{"Deployment", "Service", "ServiceMonitor", "PersistentVolumeClaim", "ConfigMap", "Kustomization"} {
		if kinds[k] == nil {
			t.Errorf("no %s", k)
		}
	}
	dep := kinds["Deployment"]
	if get(dep, "spec", "strategy", "type") != "Recreate" || get(dep, "spec", "replicas") != 1 {
		t.Errorf("Deployment: want one replica and the Recreate strategy (bbolt lock)")
	}
	c := get(dep, "spec", "template", "spec", "containers", 0)
	if get(c, "ports", 0, "containerPort") != 8080 || get(c, "ports", 0, "name") != "http" {
		t.Errorf("container port: %v", get(c, "ports"))
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if get(c, probe, "httpGet", "path") != path || get(c, probe, "httpGet", "port") != "http" {
			t.Errorf("%s: %v", probe, get(c, probe))
		}
	}
	if get(c, "volumeMounts", 0, "mountPath") != "/var/lib/modproxy" ||
		get(dep, "spec", "template", "spec", "volumes", 0, "persistentVolumeClaim", "claimName") != get(kinds["PersistentVolumeClaim"], "metadata", "name") {
		t.Errorf("store volume not mounted from the PVC at /var/lib/modproxy")
	}
	if fmt.Sprint(get(c, "securityContext", "capabilities", "add")) != "[BPF NET_ADMIN]" {
		t.Errorf("capabilities: %v", get(c, "securityContext", "capabilities"))
	}
	if get(c, "envFrom", 0, "configMapRef", "name") != get(kinds["ConfigMap"], "metadata", "name") ||
		get(kinds["ConfigMap"], "data", "MODPROXY_UPSTREAM") != placeholderUpstream {
		t.Errorf("MODPROXY_UPSTREAM not provided by the ConfigMap")
	}
	svc := kinds["Service"]
	if get(svc, "spec", "ports", 0, "port") != 8080 || get(svc, "spec", "ports", 0, "name") != "http" {
		t.Errorf("Service ports: %v", get(svc, "spec", "ports"))
	}
	sm := kinds["ServiceMonitor"]
	if get(sm, "spec", "endpoints", 0, "port") != "http" || get(sm, "spec", "endpoints", 0, "path") != "/metrics" {
		t.Errorf("ServiceMonitor endpoints: %v", get(sm, "spec", "endpoints"))
	}
	var listed []string
	for _, r := range get(kinds["Kustomization"], "resources").([]any) {
		listed = append(listed, "k8s/"+r.(string))
	}
	for _, f := range files {
		if f != "k8s/kustomization.yaml" && !strings.Contains(strings.Join(listed, " "), f) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}
}

func TestCompose(t *testing.T) {
	d := docs(t, "docker-compose.yml")[0]
	mp := get(d, "services", "modproxy")
	if !strings.Contains(fmt.Sprint(get(mp, "environment", "MODPROXY_UPSTREAM")), placeholderUpstream) {
		t.Errorf("modproxy service: MODPROXY_UPSTREAM = %v", get(mp, "environment", "MODPROXY_UPSTREAM"))
	}
	if get(mp, "build", "dockerfile") != "deploy/Dockerfile" {
		t.Errorf("modproxy build: %v", get(mp, "build"))
	}
	cmd := fmt.Sprint(get(d, "services", "prometheus", "command"))
	for _, want := range []string{"--enable-feature=native-histograms", "prometheus-native.yml"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("prometheus command lacks %s: %s", want, cmd)
		}
	}
	// Every file a service mounts from deploy/ exists.
	for _, svc := range []string{"prometheus", "grafana"} {
		for _, v := range get(d, "services", svc, "volumes").([]any) {
			src := strings.SplitN(v.(string), ":", 2)[0]
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(src); err != nil {
					t.Errorf("%s mounts %s: %v", svc, src, err)
				}
			}
		}
	}
	for _, f := range []string{"grafana/provisioning/datasources/prometheus.yml", "grafana/provisioning/dashboards/modproxy.yml"} {
		if len(docs(t, f)) != 1 {
			t.Errorf("%s: want one document", f)
		}
	}
	if get(docs(t, "grafana/provisioning/datasources/prometheus.yml")[0], "datasources", 0, "uid") != "prometheus" {
		t.Errorf("datasource uid is not the one dashboard.json uses")
	}
}

func TestDockerfile(t *testing.T) {
	df := string(readFile(t, "Dockerfile"))
	for _, want := range []string{
		"FROM golang:1.26 AS build",
		`CGO_ENABLED=0 go build -trimpath -ldflags "-s -w"`,
		"./cmd/modproxy",
		"USER 65532",
		"VOLUME /var/lib/modproxy",
		"EXPOSE 8080",
		`ENTRYPOINT ["/modproxy","serve","--db","/var/lib/modproxy/modproxy.db","--listen",":8080"]`,
		"--cap-add BPF --cap-add NET_ADMIN",
		"MODPROXY_UPSTREAM",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

func TestDashboard(t *testing.T) {
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr   string `json:"expr"`
				Format string `json:"format"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, "grafana/dashboard.json"), &d); err != nil {
		t.Fatal(err)
	}
	heat := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "prometheus" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q, %d targets", p.Title, p.Datasource.UID, len(p.Targets))
		}
		if p.Type == "heatmap" {
			e := p.Targets[0].Expr
			m := regexp.MustCompile(`^sum by \(le\) \(rate\(modproxy_upstream_phase_seconds_bucket\{phase="(\w+)"`).FindStringSubmatch(e)
			if m == nil || p.Targets[0].Format != "heatmap" || !strings.Contains(e, "[$__rate_interval]") {
				t.Errorf("heatmap %q: %s (format %q)", p.Title, e, p.Targets[0].Format)
				continue
			}
			heat[m[1]] = true
		}
	}
	for _, ph := range []string{"dns", "connect", "tls", "ttfb", "transfer"} {
		if !heat[ph] {
			t.Errorf("no heatmap panel for phase %s", ph)
		}
	}
	exprs, err := Expressions()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(exprs, "\n")
	for _, want := range []string{`modproxy_requests_total{cache="hit"}`, "modproxy_upstream_health_score", "modproxy_upstream_decisions_total"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no expression uses %s", want)
		}
	}
}

// TestMetricNames checks the helper and that every name is one of the
// contract's (docs/ARCHITECTURE.md); the test against a live /metrics lives
// with the binary.
func TestMetricNames(t *testing.T) {
	names, err := MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"modproxy_upstream_phase_seconds", "modproxy_upstream_health_score", "modproxy_upstream_checksum_failures_total",
		"modproxy_stale_served_total", "modproxy_store_disk_free_bytes", "modproxy_store_limit_bytes", "modproxy_requests_total", "modproxy_upstream_decisions_total"} {
		if !contains(names, want) {
			t.Errorf("MetricNames lacks %s: %v", want, names)
		}
	}
	for _, n := range names {
		if strings.HasSuffix(n, "_bucket") || strings.Contains(n, ":") {
			t.Errorf("MetricNames returned %s", n)
		}
	}
	arch, err := os.ReadFile("../docs/ARCHITECTURE.md")
	if err != nil {
		t.Fatalf("the metric name contract is missing: %v", err)
	}
	for _, n := range names {
		if !regexp.MustCompile("`" + n + "[`{]").Match(arch) {
			t.Errorf("%s is not in the metric name contract of docs/ARCHITECTURE.md", n)
		}
	}
}

// TestNoRealUpstream: deployment files name only the placeholder upstream.
func TestNoRealUpstream(t *testing.T) {
	re := regexp.MustCompile(`MODPROXY_UPSTREAM[=:]\s*(\S+)`)
	err := filepath.WalkDir(".", func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		for _, m := range re.FindAllSubmatch(readFile(t, path), -1) {
			v := strings.Trim(string(m[1]), `"'`)
			if !strings.Contains(v, placeholderUpstream) && !strings.HasPrefix(v, "${") {
				t.Errorf("%s: MODPROXY_UPSTREAM set to %q; use the placeholder %s", path, v, placeholderUpstream)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readYAML(t *testing.T, path string) map[any]any {
	t.Helper()
	var m map[any]any
	if err := yaml.Unmarshal(readFile(t, path), &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// TestKubernetesSecureOverlay checks the access-control overlay: the
// Secrets exist with the keys the container reads, mounted as whole
// directories (so that updates reach the pod), and the probes and the
// ServiceMonitor use the admin port that needs no token.
func TestKubernetesSecureOverlay(t *testing.T) {
	kinds := map[string][]map[any]any{}
	files, _ := filepath.Glob("k8s-secure/*.yaml")
	for _, f := range files {
		for _, d := range docs(t, f) {
			k, _ := d["kind"].(string)
			kinds[k] = append(kinds[k], d)
		}
	}
	k := kinds["Kustomization"][0]
	if fmt.Sprint(get(k, "resources")) != "[../k8s secrets.yaml]" {
		t.Errorf("overlay resources: %v", get(k, "resources"))
	}
	for _, p := range get(k, "patches").([]any) {
		if path, ok := p.(map[any]any)["path"].(string); ok {
			if _, err := os.Stat(filepath.Join("k8s-secure", path)); err != nil {
				t.Errorf("patch %s: %v", path, err)
			}
		}
	}
	secrets := map[string]map[any]any{}
	for _, s := range kinds["Secret"] {
		secrets[get(s, "metadata", "name").(string)] = s
	}
	if get(secrets["modproxy-tls"], "type") != "kubernetes.io/tls" || get(secrets["modproxy-tls"], "stringData", "tls.crt") == nil {
		t.Errorf("modproxy-tls: %v", secrets["modproxy-tls"])
	}
	for _, key := range []string{"auth.yaml", "policy.yaml"} {
		if get(secrets["modproxy-access"], "stringData", key) == nil {
			t.Errorf("modproxy-access lacks %s", key)
		}
	}
	dep := kinds["Deployment"][0]
	c := get(dep, "spec", "template", "spec", "containers", 0)
	env := map[string]string{}
	for _, e := range get(c, "env").([]any) {
		m := e.(map[any]any)
		env[m["name"].(string)] = m["value"].(string)
	}
	mounts := map[string]string{}
	for _, m := range get(c, "volumeMounts").([]any) {
		mm := m.(map[any]any)
		if mm["subPath"] != nil {
			t.Errorf("volume %v mounted with subPath: its updates would never reach the pod", mm["name"])
		}
		mounts[mm["name"].(string)] = mm["mountPath"].(string)
	}
	volumes := map[string]string{}
	for _, v := range get(dep, "spec", "template", "spec", "volumes").([]any) {
		vm := v.(map[any]any)
		volumes[vm["name"].(string)] = fmt.Sprint(get(vm, "secret", "secretName"))
	}
	for name, want := range map[string]struct{ volume, key string }{
		"MODPROXY_TLS_CERT":    {"tls", "tls.crt"},
		"MODPROXY_TLS_KEY":     {"tls", "tls.key"},
		"MODPROXY_AUTH_FILE":   {"access", "auth.yaml"},
		"MODPROXY_POLICY_FILE": {"access", "policy.yaml"},
	} {
		if env[name] != mounts[want.volume]+"/"+want.key || secrets[volumes[want.volume]] == nil {
			t.Errorf("%s = %q: not %s of a mounted Secret (mounts %v, volumes %v)", name, env[name], want.key, mounts, volumes)
		}
	}
	if env["MODPROXY_ADMIN_LISTEN"] != ":9090" || get(c, "ports", 0, "containerPort") != 9090 || get(c, "ports", 0, "name") != "admin" {
		t.Errorf("admin listener: env %q, ports %v", env["MODPROXY_ADMIN_LISTEN"], get(c, "ports"))
	}
	for _, probe := range []string{"readinessProbe", "livenessProbe"} {
		if get(c, probe, "httpGet", "port") != "admin" {
			t.Errorf("%s does not use the admin port: %v", probe, get(c, probe))
		}
	}
	if !strings.Contains(fmt.Sprint(get(k, "patches")), "value:admin") && !strings.Contains(fmt.Sprint(get(k, "patches")), "value: admin") {
		t.Errorf("the ServiceMonitor is not moved to the admin port: %v", get(k, "patches"))
	}
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		run(t, kubectl, "kustomize", "k8s-secure")
	}
}

// The multi-replica overlay: rolling updates gated by readiness, a
// disruption budget, the bucket's ConfigMap and Secret reaching the
// container, and the local tier on a size-limited emptyDir bounded below
// that limit by --cache-size.
func TestKubernetesReplicasOverlay(t *testing.T) {
	kinds := map[string][]map[any]any{}
	files, _ := filepath.Glob("k8s-replicas/*.yaml")
	for _, f := range files {
		for _, d := range docs(t, f) {
			k, _ := d["kind"].(string)
			kinds[k] = append(kinds[k], d)
		}
	}
	k := kinds["Kustomization"][0]
	if fmt.Sprint(get(k, "resources")) != "[../k8s s3.yaml pdb.yaml]" {
		t.Errorf("overlay resources: %v", get(k, "resources"))
	}
	if !strings.Contains(fmt.Sprint(get(k, "patches")), "$patch: delete") {
		t.Error("the overlay keeps the PersistentVolumeClaim: the local tier is an emptyDir")
	}
	dep := kinds["Deployment"][0]
	if r, _ := get(dep, "spec", "replicas").(int); r < 2 {
		t.Errorf("replicas %v, want at least 2", get(dep, "spec", "replicas"))
	}
	if get(dep, "spec", "strategy", "type") != "RollingUpdate" || get(dep, "spec", "strategy", "rollingUpdate", "maxUnavailable") != 0 {
		t.Errorf("strategy %v: want RollingUpdate with maxUnavailable 0", get(dep, "spec", "strategy"))
	}
	pdb := kinds["PodDisruptionBudget"][0]
	if get(pdb, "spec", "maxUnavailable") != 1 || get(pdb, "spec", "selector", "matchLabels", "app.kubernetes.io/name") != "modproxy" {
		t.Errorf("PodDisruptionBudget: %v", get(pdb, "spec"))
	}
	var cm, secret map[any]any
	for _, c := range kinds["ConfigMap"] {
		if get(c, "metadata", "name") == "modproxy-s3" {
			cm = c
		}
	}
	for _, s := range kinds["Secret"] {
		if get(s, "metadata", "name") == "modproxy-s3" {
			secret = s
		}
	}
	for _, key := range []string{"MODPROXY_S3_BUCKET", "MODPROXY_S3_PREFIX", "MODPROXY_S3_REGION", "MODPROXY_CACHE_SIZE"} {
		if v, _ := get(cm, "data", key).(string); v == "" {
			t.Errorf("ConfigMap modproxy-s3 lacks %s", key)
		}
	}
	for _, key := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if get(secret, "stringData", key) == nil {
			t.Errorf("Secret modproxy-s3 lacks %s", key)
		}
	}
	c := get(dep, "spec", "template", "spec", "containers", 0)
	refs := fmt.Sprint(get(c, "envFrom"))
	for _, want := range []string{"configMapRef:map[name:modproxy]", "configMapRef:map[name:modproxy-s3]", "secretRef:map[name:modproxy-s3]"} {
		if !strings.Contains(refs, want) {
			t.Errorf("envFrom %s lacks %s (a strategic merge replaces the base's list)", refs, want)
		}
	}
	if get(c, "lifecycle", "preStop") == nil {
		t.Error("no preStop pause: requests would reach a draining pod")
	}
	vol := get(dep, "spec", "template", "spec", "volumes", 0)
	if get(vol, "name") != "store" || get(vol, "emptyDir", "sizeLimit") == nil {
		t.Fatalf("store volume %v: want an emptyDir with a sizeLimit", vol)
	}
	limit := parseQuantity(t, get(vol, "emptyDir", "sizeLimit").(string))
	cacheSize := parseQuantity(t, strings.TrimSuffix(get(cm, "data", "MODPROXY_CACHE_SIZE").(string), "B"))
	if cacheSize <= 0 || cacheSize >= limit {
		t.Errorf("MODPROXY_CACHE_SIZE %d must be below the emptyDir sizeLimit %d (else the kubelet evicts the pod)", cacheSize, limit)
	}
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		out := run(t, kubectl, "kustomize", "k8s-replicas")
		if strings.Contains(out, "kind: PersistentVolumeClaim") || strings.Contains(out, "claimName") {
			t.Errorf("rendered overlay still has the PersistentVolumeClaim:\n%s", out)
		}
		for _, want := range []string{"type: RollingUpdate", "kind: PodDisruptionBudget", "sizeLimit: 20Gi", "name: modproxy-s3", "path: /readyz"} {
			if !strings.Contains(out, want) {
				t.Errorf("rendered overlay lacks %q", want)
			}
		}
		if strings.Contains(out, "Recreate") {
			t.Error("rendered overlay keeps the Recreate strategy")
		}
	}
}

// parseQuantity parses the Kubernetes quantities used here (Gi, Mi).
func parseQuantity(t *testing.T, s string) int64 {
	t.Helper()
	for suffix, mult := range map[string]int64{"Gi": 1 << 30, "Mi": 1 << 20} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			var v int64
			if _, err := fmt.Sscan(n, &v); err != nil {
				t.Fatalf("quantity %q: %v", s, err)
			}
			return v * mult
		}
	}
	t.Fatalf("quantity %q: unknown unit", s)
	return 0
}

// The two-replica compose example: both replicas on one bucket of the
// MinIO it runs, each with its own local tier, behind nginx.
func TestComposeReplicas(t *testing.T) {
	d := docs(t, "docker-compose-replicas.yml")[0]
	var buckets []string
	vols := map[string]bool{}
	for _, name := range []string{"modproxy-a", "modproxy-b"} {
		svc := get(d, "services", name)
		if svc == nil {
			t.Fatalf("no service %s", name)
		}
		env := get(svc, "environment")
		buckets = append(buckets, fmt.Sprint(get(env, "MODPROXY_S3_BUCKET")))
		if get(env, "MODPROXY_S3_ENDPOINT") != "http://minio:9000" || get(env, "MODPROXY_S3_PATH_STYLE") != "true" {
			t.Errorf("%s: S3 endpoint %v, path style %v", name, get(env, "MODPROXY_S3_ENDPOINT"), get(env, "MODPROXY_S3_PATH_STYLE"))
		}
		if !strings.Contains(fmt.Sprint(get(env, "MODPROXY_UPSTREAM")), placeholderUpstream) {
			t.Errorf("%s: MODPROXY_UPSTREAM = %v", name, get(env, "MODPROXY_UPSTREAM"))
		}
		v := fmt.Sprint(get(svc, "volumes", 0))
		if vols[v] {
			t.Errorf("%s shares its local tier volume %s with the other replica (bbolt locks its file)", name, v)
		}
		vols[v] = true
	}
	if buckets[0] != buckets[1] || !strings.Contains(fmt.Sprint(get(d, "services", "bucket", "entrypoint")), "local/"+buckets[0]) {
		t.Errorf("replicas' buckets %v are not the one the bucket job creates", buckets)
	}
	conf := string(readFile(t, "replicas/nginx.conf"))
	for _, want := range []string{"server modproxy-a:8080", "server modproxy-b:8080", "proxy_buffering off"} {
		if !strings.Contains(conf, want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
}
