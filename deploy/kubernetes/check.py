#!/usr/bin/env python3
"""Checks deploy/kubernetes/ against the Kubernetes schemas and against clonelb itself.

    python3 deploy/kubernetes/check.py [CLONELB_BINARY]

CLONELB_BINARY defaults to $CARGO_TARGET_DIR/debug/clonelb, else target/debug/clonelb
(what `cargo test` builds). Needs Python 3.11, PyYAML and kubernetes-validate (.ci/run
installs them); `kubectl`, when installed, also builds the kustomization (offline). Run by
.ci/run after `cargo test`. Prints one line per check ("ok   NAME: ..." or
"FAIL NAME: ..."), then "N passed, M failed", and exits 1 when any check failed.

The checks:
 1. schemas: every manifest validates offline against the Kubernetes JSON schemas that
    kubernetes-validate bundles, in strict mode (unknown fields are errors), for
    Kubernetes 1.30 (the oldest the manifests are for: the preStop sleep action is on by
    default from 1.30) and the newest version the pinned package knows; the
    kustomization lists exactly these manifests.
 2. wiring, then `clonelb check`: the Deployment mounts the ConfigMap as a directory at
    /etc/clonelb (no subPath), the Secret at /etc/clonelb/secret, runs
    `run --config /etc/clonelb/lb.toml`, and lb.toml's token_file is a key of the Secret.
    Then lb.toml, taken out of the ConfigMap, is written to a temporary folder with every
    /etc/clonelb/ path pointed there (and the Secret's token written where token_file
    says), and the binary's `clonelb check` must accept it.
 3. ports: the probes' port is [admin] listen's port and the Service's targetPort is
    [listen] http's port (named ports resolved through the container's ports).
 4. grace period: terminationGracePeriodSeconds is more than the preStop sleep plus
    [proxy] shutdown_timeout (the period counts from the deletion, preStop included).
 5. start as an unprivileged user: the binary, lb.toml and the token file are copied to a
    temporary folder that user can read, the listeners rewritten to 127.0.0.1 port 0,
    [dns] resolver pointed at a UDP port on 127.0.0.1 that this script holds open and
    never answers (so no DNS query leaves the machine: nothing but loopback is used), and
    the binary run under setpriv as uid/gid 65534 (when this script runs as root; else as
    the current user). /ready must answer 200 within the deadline; /live 200; /status 401
    without the token and 200 with it; the http listener answers with clonelb's own 503
    (no clone: the name is never resolved); SIGTERM must end it with exit 0 and its log
    must not hold the token.
    Why no clone is needed: /ready reports that the listeners are bound and lb.toml is
    loaded (src/lib.rs sets it after the workers start), not that a clone is up, so an
    unresolved name still gives 200; a static loopback clone would test nothing more.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MANIFESTS = [
    "configmap.yaml",
    "secret.yaml",
    "deployment.yaml",
    "service.yaml",
    "app-headless.yaml",
]
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
MOUNT = "/etc/clonelb/"
UNPRIVILEGED = 65534  # nobody
READY_DEADLINE = 20.0  # seconds for /ready to answer 200
STOP_DEADLINE_EXTRA = 10.0  # seconds beyond shutdown_timeout for the exit after SIGTERM

try:
    import yaml
except ImportError:  # pragma: no cover
    print("FAIL setup: PyYAML is missing (python3 -m pip install PyYAML)")
    sys.exit(2)
try:
    from kubernetes_validate import utils as kubernetes_validate
    from kubernetes_validate.version import __version__ as KV_VERSION
except ImportError:  # pragma: no cover
    print("FAIL setup: kubernetes-validate is missing (python3 -m pip install kubernetes-validate)")
    sys.exit(2)


class Checks:
    """Collects one line per check."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, name: str, detail: str) -> None:
        self.passed += 1
        print(f"ok   {name}: {detail}", flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        print(f"FAIL {name}: {detail}", flush=True)

    def expect(self, name: str, good: bool, detail: str) -> bool:
        (self.ok if good else self.fail)(name, detail)
        return good


def load_manifests() -> dict[str, list[dict]]:
    out = {}
    for name in MANIFESTS:
        with open(HERE / name, encoding="utf-8") as f:
            out[name] = [d for d in yaml.safe_load_all(f) if d]
    return out


def one(manifests: dict[str, list[dict]], kind: str, name: str | None = None) -> dict:
    found = [
        d
        for docs in manifests.values()
        for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise LookupError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


# --- 1. schemas ----------------------------------------------------------------------


def check_schemas(checks: Checks, manifests: dict[str, list[dict]]) -> None:
    for name, docs in manifests.items():
        problems = []
        for doc in docs:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    problems.append(f"{doc.get('kind')} against {version}: {path}: {e.message}")
                except Exception as e:  # no schema for the kind, unsupported version, ...
                    problems.append(f"{doc.get('kind')} against {version}: {e}")
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        if problems:
            checks.fail(f"schema {name}", "; ".join(problems))
        else:
            versions = " and ".join(v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
            checks.ok(
                f"schema {name}",
                f"{kinds} valid (strict) for Kubernetes {versions} (kubernetes-validate {KV_VERSION})",
            )
    with open(HERE / "kustomization.yaml", encoding="utf-8") as f:
        kustomization = yaml.safe_load(f)
    listed = kustomization.get("resources", [])
    if sorted(listed) != sorted(MANIFESTS):
        checks.fail("kustomization", f"resources {listed} are not the manifests {MANIFESTS}")
        return
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        checks.ok(
            "kustomization",
            f"lists the {len(MANIFESTS)} manifests (kubectl not installed: not built)",
        )
        return
    built = subprocess.run(
        [kubectl, "kustomize", str(HERE)], capture_output=True, text=True, timeout=60
    )
    if built.returncode != 0:
        checks.fail("kustomization", f"kubectl kustomize failed: {built.stderr.strip()}")
        return
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    expected = sum(len(docs) for docs in manifests.values())
    checks.expect(
        "kustomization",
        len(objects) == expected,
        f"lists the {len(MANIFESTS)} manifests; kubectl kustomize builds {len(objects)} objects (expected {expected})",
    )


# --- lb.toml -------------------------------------------------------------------------


def set_keys(text: str, table: str, keys: dict[str, str]) -> str:
    """lb.toml `text` with `keys` (name -> TOML value) set in `[table]` (appended when
    missing, the table too). Line-based: enough for this file."""
    out: list[str] = []
    current = None
    seen_table = False
    pending = dict(keys)

    def flush() -> None:
        for k, v in pending.items():
            out.append(f"{k} = {v}")
        pending.clear()

    for line in text.splitlines():
        header = re.match(r"^\s*\[\[?([A-Za-z0-9_.]+)\]\]?\s*(#.*)?$", line)
        if header:
            if current == table:
                flush()
            current = header.group(1)
            if current == table:
                seen_table = True
            out.append(line)
            continue
        if current == table:
            m = re.match(r"^\s*([A-Za-z0-9_]+)\s*=", line)
            if m and m.group(1) in pending:
                out.append(f"{m.group(1)} = {pending.pop(m.group(1))}")
                continue
        out.append(line)
    if current == table:
        flush()
    if pending:
        if not seen_table:
            out.append(f"[{table}]")
        flush()
    return "\n".join(out) + "\n"


def parse_duration(value: str) -> float:
    """Seconds of an lb.toml duration ("30s", "1m", "500ms", "1h 30m", "1.5s")."""
    units = {
        "ns": 1e-9, "nsec": 1e-9, "nanos": 1e-9,
        "us": 1e-6, "µs": 1e-6, "usec": 1e-6,
        "ms": 1e-3, "msec": 1e-3, "millis": 1e-3,
        "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
        "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
        "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
        "d": 86400, "day": 86400, "days": 86400,
    }  # fmt: skip
    spans = re.findall(r"(\d+(?:\.\d+)?)\s*([A-Za-zµ]+)", value)
    rest = re.sub(r"(\d+(?:\.\d+)?)\s*([A-Za-zµ]+)", "", value).strip()
    if not spans or rest or any(u not in units for _, u in spans):
        raise ValueError(f"not a duration clonelb accepts: {value!r}")
    return sum(float(n) * units[u] for n, u in spans)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def run_check(binary: Path, config: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CLONELB_LOG"}
    return subprocess.run(
        [str(binary), "check", str(config)], capture_output=True, text=True, timeout=60, env=env
    )


# --- 2. wiring and clonelb check -----------------------------------------------------


def secret_value(secret: dict, key: str) -> str | None:
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        import base64

        return base64.b64decode(secret["data"][key]).decode()
    return None


def check_wiring(checks: Checks, manifests: dict[str, list[dict]], lb: dict) -> None:
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    configmap = one(manifests, "ConfigMap")
    secret = one(manifests, "Secret")
    problems = []
    config_mount = mounts.get("/etc/clonelb")
    if config_mount is None or "subPath" in config_mount:
        problems.append("the ConfigMap must be mounted at /etc/clonelb as a directory (no subPath)")
    elif (
        volumes.get(config_mount["name"], {}).get("configMap", {}).get("name")
        != configmap["metadata"]["name"]
    ):
        problems.append("/etc/clonelb is not the ConfigMap's volume")
    secret_mount = mounts.get("/etc/clonelb/secret")
    if secret_mount is None or "subPath" in secret_mount:
        problems.append(
            "the Secret must be mounted at /etc/clonelb/secret as a directory (no subPath)"
        )
    elif (
        volumes.get(secret_mount["name"], {}).get("secret", {}).get("secretName")
        != secret["metadata"]["name"]
    ):
        problems.append("/etc/clonelb/secret is not the Secret's volume")
    args = container.get("args", [])
    if args != ["run", "--config", "/etc/clonelb/lb.toml"]:
        problems.append(f"args are {args}, not run --config /etc/clonelb/lb.toml")
    token_file = lb.get("admin", {}).get("token_file", "")
    key = token_file.removeprefix("/etc/clonelb/secret/")
    if key == token_file or secret_value(secret, key) is None:
        problems.append(
            f"[admin] token_file {token_file!r} is not a key of the Secret mounted at /etc/clonelb/secret"
        )
    checks.expect(
        "wiring",
        not problems,
        "; ".join(problems)
        or f"ConfigMap at /etc/clonelb (a directory), Secret at /etc/clonelb/secret, token_file = its key {key!r}",
    )


def write_config(folder: Path, text: str, secret: dict, token_file: str) -> Path:
    """lb.toml and its token file under `folder`, every /etc/clonelb/ path pointed there."""
    text = text.replace(MOUNT, str(folder) + "/")
    config = folder / "lb.toml"
    config.write_text(text, encoding="utf-8")
    key = token_file.removeprefix("/etc/clonelb/secret/")
    token = folder / token_file.removeprefix(MOUNT)
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(secret_value(secret, key) or "", encoding="utf-8")
    return config


# --- 3. ports ------------------------------------------------------------------------


def resolve_port(port, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_ports(checks: Checks, manifests: dict[str, list[dict]], lb: dict) -> None:
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    admin_port = port_of(lb["admin"]["listen"])
    http_port = port_of(lb["listen"]["http"])
    problems = []
    for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/live")]:
        get = container.get(probe, {}).get("httpGet", {})
        port = resolve_port(get.get("port"), container)
        if port != admin_port:
            problems.append(
                f"{probe} port {get.get('port')!r} ({port}) is not [admin] listen's {admin_port}"
            )
        if get.get("path") != path:
            problems.append(f"{probe} path {get.get('path')!r} is not {path}")
    service = one(manifests, "Service", "clonelb")
    if any(pod_labels.get(k) != v for k, v in service["spec"]["selector"].items()):
        problems.append("the Service clonelb does not select the Deployment's pods")
    ports = service["spec"]["ports"]
    target = resolve_port(ports[0].get("targetPort"), container)
    if target != http_port:
        problems.append(
            f"Service targetPort {ports[0].get('targetPort')!r} ({target}) is not [listen] http's {http_port}"
        )
    checks.expect(
        "ports",
        not problems,
        "; ".join(problems)
        or f"probes /ready and /live on {admin_port} = [admin] listen; Service {ports[0]['port']} -> {target} = [listen] http",
    )


# --- 4. grace period -----------------------------------------------------------------


def check_grace(checks: Checks, manifests: dict[str, list[dict]], lb: dict) -> None:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = parse_duration(lb.get("proxy", {}).get("shutdown_timeout", "30s"))
    pre_stop = (
        pod["containers"][0]
        .get("lifecycle", {})
        .get("preStop", {})
        .get("sleep", {})
        .get("seconds", 0)
    )
    checks.expect(
        "grace period",
        grace > pre_stop + shutdown,
        f"terminationGracePeriodSeconds {grace} {'>' if grace > pre_stop + shutdown else 'is not more than'} "
        f"preStop sleep {pre_stop}s + shutdown_timeout {shutdown:g}s",
    )


# --- 5. a real start as an unprivileged user -----------------------------------------


def http_get(
    address: str, path: str, token: str | None = None, timeout: float = 2.0
) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def check_start(
    checks: Checks,
    binary: Path,
    text: str,
    secret: dict,
    token_file: str,
    shutdown: float,
) -> None:
    name = "start unprivileged"
    work = Path(tempfile.mkdtemp(prefix="clonelb-k8s-"))
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    child = None
    try:
        resolver.bind(("127.0.0.1", 0))  # held open, never read: queries get no answer
        resolver_address = f"127.0.0.1:{resolver.getsockname()[1]}"
        text = set_keys(text, "listen", {"http": '"127.0.0.1:0"'})
        text = set_keys(text, "admin", {"listen": '"127.0.0.1:0"'})
        if re.search(r"^\s*\[dns\]", text, flags=re.M):
            text = set_keys(text, "dns", {"resolver": f'"{resolver_address}"'})
            dns = f"DNS queries only to {resolver_address}, which never answers"
        else:
            dns = "no [dns] in this copy"
        os.chmod(work, 0o755)
        config = write_config(work, text, secret, token_file)
        token_path = work / token_file.removeprefix(MOUNT)
        token = token_path.read_text(encoding="utf-8").strip()
        shutil.copy2(binary, work / "clonelb")
        os.chmod(work / "clonelb", 0o755)
        os.chmod(config, 0o644)
        command = [str(work / "clonelb"), "run", "--config", str(config)]
        if os.geteuid() == 0:
            # As the Secret volume with fsGroup: the token readable by the user's group only.
            for p in [token_path.parent, token_path]:
                os.chown(p, UNPRIVILEGED, UNPRIVILEGED)
            os.chmod(token_path.parent, 0o750)
            os.chmod(token_path, 0o440)
            command = [
                "setpriv",
                f"--reuid={UNPRIVILEGED}",
                f"--regid={UNPRIVILEGED}",
                "--clear-groups",
                "--",
            ] + command
            who = f"uid/gid {UNPRIVILEGED}"
        else:
            who = f"uid {os.geteuid()} (not root: no other user to switch to)"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLONELB_LOG": "info"}
        log_path = work / "stderr.log"
        with open(log_path, "w", encoding="utf-8") as log:
            child = subprocess.Popen(
                command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        def logged() -> str:
            return log_path.read_text(encoding="utf-8", errors="replace")

        # The addresses it took, from its "clonelb serving listen=ADDR ... admin=ADDR" line.
        deadline = time.monotonic() + READY_DEADLINE
        listen = admin = None
        while time.monotonic() < deadline and child.poll() is None:
            m = re.search(r"clonelb serving.*", logged())
            if m:
                listen = re.search(r"\blisten=(\S+)", m.group(0))
                admin = re.search(r"\badmin=(\S+)", m.group(0))
                break
            time.sleep(0.05)
        if not (listen and admin):
            checks.fail(
                name,
                f"no 'clonelb serving' line (exit {child.poll()}); its log: {logged()[-2000:]!r}",
            )
            return
        listen, admin = listen.group(1), admin.group(1)
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = http_get(admin, "/ready")[0]
                if ready == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        problems = []
        if ready != 200:
            problems.append(f"/ready answered {ready} within {READY_DEADLINE:g}s")
        live = http_get(admin, "/live")[0]
        if live != 200:
            problems.append(f"/live answered {live}")
        anonymous = http_get(admin, "/status")[0]
        with_token = http_get(admin, "/status", token)[0]
        if (anonymous, with_token) != (401, 200):
            problems.append(
                f"/status answered {anonymous} without the token and {with_token} with it"
            )
        served = http_get(listen, "/")
        if served[0] not in (502, 503):
            problems.append(
                f"GET / on the http listener answered {served[0]}, not clonelb's own 503/502"
            )
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=shutdown + STOP_DEADLINE_EXTRA)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            problems.append(f"exit {code} after SIGTERM (expected 0)")
        if token in logged():
            problems.append("the token appears in its log")
        checks.expect(
            name,
            not problems,
            (
                "; ".join(problems) + f"; its log: {logged()[-1500:]!r}"
                if problems
                else f"as {who}: /ready 200, /live 200, /status 401 without the token and 200 with it, "
                f"http listener {served[0]} (no clone answers; {dns}); SIGTERM -> exit 0"
            ),
        )
    except Exception as e:  # a connection refused, a file that could not be written, ...
        checks.fail(name, f"{type(e).__name__}: {e}")
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        resolver.close()
        shutil.rmtree(work, ignore_errors=True)


# --- main ----------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")):
        print(__doc__)
        return 2
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    binary = Path(sys.argv[1]) if len(sys.argv) == 2 else target / "debug" / "clonelb"
    binary = binary.resolve()
    checks = Checks()
    if not binary.is_file():
        checks.fail("setup", f"no clonelb binary at {binary} (build it: cargo build)")
        print(f"{checks.passed} passed, {checks.failed} failed")
        return 1

    manifests = load_manifests()
    check_schemas(checks, manifests)

    configmap = one(manifests, "ConfigMap")
    secret = one(manifests, "Secret")
    text = configmap["data"]["lb.toml"]
    lb = tomllib.loads(text)
    token_file = lb.get("admin", {}).get("token_file", "")
    check_wiring(checks, manifests, lb)

    with tempfile.TemporaryDirectory(prefix="clonelb-k8s-check-") as folder:
        config = write_config(Path(folder), text, secret, token_file)
        result = run_check(binary, config)
        summary = (result.stdout.strip() or result.stderr.strip()).replace(folder, "/etc/clonelb")
        checks.expect("clonelb check", result.returncode == 0, summary.replace("\n", " | "))

    check_ports(checks, manifests, lb)
    check_grace(checks, manifests, lb)
    shutdown = parse_duration(lb.get("proxy", {}).get("shutdown_timeout", "30s"))
    check_start(checks, binary, text, secret, token_file, shutdown)

    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
