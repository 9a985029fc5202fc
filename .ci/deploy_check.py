#!/usr/bin/env python3
"""Runs the real SSPM binaries with the configuration of docker-compose.yml and of
deploy/kubernetes, on this machine: each container's environment, command, mounted keys and
health probes, with hosts, ports, certificate paths, databases and the identity provider
moved here (a stand-in OIDC issuer over HTTPS). Proves the deployments' configuration is
accepted by the services, that each service is given every public key and only its own
private key, that the probes report SERVING, that the services call each other over TLS
(with DNS load balancing on Kubernetes) with a user token of the provider, and that they
stop cleanly.

What cannot be checked without a container engine (the image build, the collector, Jaeger,
the kubelet) is left to `docker compose up` / a cluster.
"""

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oidc_issuer import Issuer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["authorization", "ticketing", "approval", "request"]  # start order: request last
APIS = {
    "request": "PortRequestService",
    "authorization": "AuthorizationService",
    "approval": "ApprovalService",
    "ticketing": "TicketingService",
}
PORTS = {"request": 50051, "authorization": 50052, "approval": 50053, "ticketing": 50054}
ADMIN_PORTS = {"request": 9461, "authorization": 9462, "approval": 9463, "ticketing": 9464}


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def free_port(taken=set()):
    """A port free now and outside the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, the same range
    outgoing connections (the services' own, to PostgreSQL) take their local ports from: one
    of them took a port picked this way before its service listened on it (CI, 2026-12-05).
    Ports below the range are only ever taken by a listener that asks for them.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low <= 26000:
        fail(f"the ephemeral port range starts at {low}: below the 20000-25999 this check uses")
    rng = random.Random()
    while True:
        # 20000-25999: under the ephemeral range and clear of load-smoke's 26xxx, the Go
        # client's 27051-27054 and the Rust tests' 27000-32699.
        port = rng.randrange(20000, 26000)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


class Site:
    """This machine standing in for the deployment's network, volumes and database server."""

    def __init__(self, name, args, work):
        self.name = name
        self.bin = Path(args.bin)
        self.work = work
        self.postgres = args.postgres
        self.ports = {p: free_port() for p in list(PORTS.values()) + list(ADMIN_PORTS.values())}
        self.certs = work / "certs"
        self.databases = {s: f"sspm_deploy_{name}_{s}" for s in SERVICES}
        self.paths = {}  # paths in the container -> files here
        out = subprocess.run(
            [self.bin / "sspm", "certs", "--out", self.certs], capture_output=True, text=True, env=clean_env()
        )
        if out.returncode != 0:
            fail(f"sspm certs: {out.stderr}")
        # The users' identity provider, over HTTPS with the development CA's certificate.
        self.issuer = Issuer("unset", name="localhost", certfile=str(self.certs / "services.pem"),
                             keyfile=str(self.certs / "services-key.pem"))

    def rewrite(self, value):
        """A value of the deployment as it must be on this machine."""
        value = str(value)
        for inside, here in self.paths.items():
            value = value.replace(inside, str(here))
        # Service host names (compose: request; Kubernetes: sspm-request) -> localhost.
        value = re.sub(r"(?<=://)(?:sspm-)?(?:request|authorization|approval|ticketing)(?=:)", "localhost", value)
        value = value.replace("0.0.0.0:", "127.0.0.1:")
        return re.sub(r"\b(5005[1-4]|946[1-4])\b", lambda m: str(self.ports[int(m.group(1))]), value)

    def port(self, service):
        return self.ports[PORTS[service]]

    def prepare(self):
        base = self.postgres.rsplit("/", 1)[0]
        for db in self.databases.values():
            for sql in (f'DROP DATABASE IF EXISTS "{db}"', f'CREATE DATABASE "{db}"'):
                subprocess.run(["psql", self.postgres, "-qc", sql], check=True, capture_output=True)
        return base

    def cleanup(self):
        self.issuer.stop()
        for db in self.databases.values():
            subprocess.run(["psql", self.postgres, "-qc", f'DROP DATABASE IF EXISTS "{db}"'], capture_output=True)


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("SSPM_", "OTEL_", "RUST_BACKTRACE"))}


def container_env(site, env, database_key, mounts=None):
    """The container's environment here: rewritten (paths under the container's own mounts
    first), its database on this machine's server (`database_key` names the one database
    key it may set; "*" allows every service's), the identity provider the stand-in."""
    out = clean_env()
    for key, value in env.items():
        if key == "OTEL_EXPORTER_OTLP_ENDPOINT":
            continue  # no collector on this machine: export stays off
        for inside, here in (mounts or {}).items():
            if str(value) == inside or str(value).startswith(inside + "/"):
                value = str(here) + str(value)[len(inside):]
        out[key] = site.rewrite(value)
    if "SSPM__AUTH__USERS__ISSUER_URL" in out:
        out["SSPM__AUTH__USERS__ISSUER_URL"] = site.issuer.url
        out["SSPM__AUTH__USERS__CA_PATH"] = str(site.certs / "ca.pem")
    for service, db in site.databases.items():
        key = f"SSPM__SERVICES__{service.upper()}__DATABASE_URL"
        if key in out:
            if database_key != "*" and key != database_key:
                fail(f"{site.name}: {key} is set in another service's container")
            out[key] = f"{site.postgres.rsplit('/', 1)[0]}/{db}"
    return out


# --- the deployments, read from their files -------------------------------------------------


def compose(site):
    """{service: (environment, command, probes)} from `docker-compose config`."""
    env = dict(os.environ, SSPM_OIDC_ISSUER="https://idp.example.com", SSPM_DB_PASSWORD="unused-here")
    text = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "init", "config"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    cfg = yaml.safe_load(text)["services"]
    certs = cfg["certs"]
    if "sspm certs --out /certs" not in " ".join(certs["command"]):
        fail(f"compose: the certs service no longer runs `sspm certs --out /certs`: {certs['command']}")
    site.paths = {
        "/certs/ca.pem": site.certs / "ca.pem",
        "/certs/services-key.pem": site.certs / "services-key.pem",
        "/certs/services.pem": site.certs / "services.pem",
    }
    # The one-shot `keys` service, run here with its volumes as directories.
    keys = cfg["keys"]
    volumes = {}
    script = keys["command"][-1].replace("$$", "$").replace("/tmp/keys", str(site.work / "keys-tmp"))
    script = script.replace("sspm keys", f"{site.bin / 'sspm'} keys")
    for v in keys["volumes"]:
        source, target = v.split(":")[:2]
        volumes[source] = site.work / "volumes" / target.strip("/")
        volumes[source].mkdir(parents=True)
        parent = target.rsplit("/", 1)[0] + "/"
        script = script.replace(" " + parent, f" {site.work / 'volumes'}{parent}")
        script = script.replace('"' + parent, f'"{site.work / "volumes"}{parent}')
    for _ in range(2):  # a second run leaves the keys alone
        out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, env=clean_env())
        if out.returncode != 0:
            fail(f"compose keys: {out.stderr}")
    out = {}
    for service in SERVICES:
        s = cfg[service]
        test = s["healthcheck"]["test"]
        if test[0] != "CMD":
            fail(f"compose {service}: healthcheck must be an exec form CMD: {test}")
        if s["environment"].get("SSPM__SERVICES__" + service.upper() + "__DATABASE_URL", "").find(f"/{service}") < 0:
            fail(f"compose {service}: not on its own database")
        if s["depends_on"].get("keys", {}).get("condition") != "service_completed_successfully":
            fail(f"compose {service}: must wait for the keys service")
        mounts = {}
        for v in s["volumes"]:
            source, target = v.split(":")[:2]
            if source in volumes:
                mounts[target] = volumes[source]
        out[service] = (s["environment"], s["command"], [test[1:]], mounts)
    init = cfg.get("init")
    if not init or init.get("profiles") != ["init"]:
        fail("compose: an `init` service in the `init` profile (run by hand, never by `up`)")
    out["init"] = (init["environment"], init["command"])
    return out


def project(site, service, sources, files):
    """The directory a projected volume of secrets gives `service`: each source secret's
    keys (or its `items`), with the values `files` holds for them."""
    here = site.work / f"projected-{service}"
    here.mkdir()
    for src in sources:
        name = src["secret"]["name"]
        if name not in files:
            fail(f"kubernetes sspm-{service}: projects the unknown secret {name}")
        items = src["secret"].get("items") or [{"key": k, "path": k} for k in files[name]]
        for item in items:
            (here / item["path"]).write_bytes(files[name][item["key"]].read_bytes())
    return here


def kubernetes(site):
    """{service: (environment, command, probes)} from the manifests kustomization.yaml lists,
    with the secrets' values of this machine; checks the structure the README promises."""
    kdir = ROOT / "deploy" / "kubernetes"
    kustomization = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    docs = []
    for res in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((kdir / res).read_text()) if d]
    listed = {p.name for p in kdir.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    if listed != set(kustomization["resources"]):
        fail(f"kubernetes: kustomization.yaml lists {kustomization['resources']}, the directory has {sorted(listed)}")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind["ConfigMap"]["sspm-config"]["data"]
    secret_values = {f"{s}-database-url": "set-below" for s in SERVICES}
    example = [d for d in yaml.safe_load_all((kdir / "secrets.example.yaml").read_text()) if d]
    example_keys = {d["metadata"]["name"]: set(d["stringData"]) for d in example}
    # The key secrets, made as secrets.example.yaml says: from `sspm keys`.
    keys = site.work / "keys"
    out = subprocess.run([site.bin / "sspm", "keys", "--out", keys], capture_output=True, text=True, env=clean_env())
    if out.returncode != 0:
        fail(f"sspm keys: {out.stderr}")
    key_files = {"sspm-service-public-keys": {f"{s}.pub.pem": keys / f"{s}.pub.pem" for s in SERVICES}}
    key_files.update({f"sspm-{s}-key": {f"{s}.key.pem": keys / f"{s}.key.pem"} for s in SERVICES})
    for name, files in key_files.items():
        if example_keys.get(name) != set(files):
            fail(f"kubernetes: secrets.example.yaml's {name} must hold {sorted(files)}")
    site.paths = {"/certs/ca.crt": site.certs / "ca.pem", "/certs/tls.crt": site.certs / "services.pem",
                  "/certs/tls.key": site.certs / "services-key.pem"}
    out = {}
    for service in SERVICES:
        name = f"sspm-{service}"
        svc, dep, pdb = by_kind["Service"][name], by_kind["Deployment"][name], by_kind["PodDisruptionBudget"][name]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if svc["spec"].get("clusterIP") != "None":
            fail(f"kubernetes {name}: the Service must be headless (clusterIP: None) for client-side balancing")
        for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
            if any(labels.get(k) != v for k, v in selector.items()):
                fail(f"kubernetes {name}: selector {selector} does not match the pods' labels {labels}")
        if dep["spec"]["replicas"] < 2 or pdb["spec"].get("minAvailable", 0) < 1:
            fail(f"kubernetes {name}: at least 2 replicas and a PodDisruptionBudget keeping one")
        grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"][0]["port"]
        if config[f"SSPM__SERVICES__{service.upper()}__ENDPOINT"] != f"https://{name}:{grpc}":
            fail(f"kubernetes {name}: the ConfigMap's endpoint is not the headless Service")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        env = {}
        for src in c.get("envFrom", []):
            if src["configMapRef"]["name"] != "sspm-config":
                fail(f"kubernetes {name}: unknown ConfigMap {src}")
            env.update(config)
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                if ref["key"] not in example_keys.get(ref["name"], set()):
                    fail(f"kubernetes {name}: {ref} is not in secrets.example.yaml")
                if ref["key"] in secret_values:
                    env[e["name"]] = secret_values[ref["key"]]
                elif not ref.get("optional"):
                    fail(f"kubernetes {name}: no value for the required secret {ref}")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        if volumes.get("certs", {}).get("secret", {}).get("secretName") != "sspm-tls" or mounts.get("certs") != "/certs":
            fail(f"kubernetes {name}: /certs must be the sspm-tls secret")
        if "projected" not in volumes.get("keys", {}) or "keys" not in mounts:
            fail(f"kubernetes {name}: the service keys must be a projected volume of secrets")
        here = project(site, service, volumes["keys"]["projected"]["sources"], key_files)
        probes = [c[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        out[service] = (env, c["command"], probes, {mounts["keys"]: here})
    job = by_kind.get("Job", {}).get("sspm-init")
    if not job:
        fail("kubernetes: the sspm-init Job (kustomization.yaml) that initialises new databases")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = dict(config)
    for e in c["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        if ref["key"] not in example_keys.get(ref["name"], set()):
            fail(f"kubernetes sspm-init: {ref} is not in secrets.example.yaml")
        env[e["name"]] = secret_values[ref["key"]]
    out["init"] = (env, c["command"])
    return out


# --- running them ----------------------------------------------------------------------------


def run_probe(site, argv, env):
    if argv[0] != "sspm":
        fail(f"{site.name}: probe does not run the image's sspm: {argv}")
    argv = [str(site.bin / "sspm")] + [site.rewrite(a) for a in argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


def check(site, deployment, grpcurl):
    print(f"== {site.name}: the real services with its configuration", flush=True)
    site.prepare()
    procs = {}
    logs = {}
    try:
        # On databases without SSPM's schema, a service refuses to start and says how to
        # initialise; then the deployment's init step initialises them.
        env, command = deployment["init"]
        ienv = container_env(site, env, "*")
        first = SERVICES[0]
        penv = container_env(site, deployment[first][0], f"SSPM__SERVICES__{first.upper()}__DATABASE_URL",
                             deployment[first][3])
        out = subprocess.run([str(site.bin / f"sspm-{first}")], env=penv, cwd=site.work,
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 or "sspm init" not in out.stderr:
            fail(f"{site.name}: {first} started on an empty database: {out.stderr[-2000:]}")
        print(f"   {first} on an empty database: refused, naming `sspm init`", flush=True)
        if command != ["sspm", "init"]:
            fail(f"{site.name} init: command {command}")
        for key in (f"SSPM__SERVICES__{s.upper()}__DATABASE_URL" for s in SERVICES):
            if key not in ienv:
                fail(f"{site.name} init: no {key}")
        out = subprocess.run([str(site.bin / "sspm"), "init"], env=ienv, cwd=site.work,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            fail(f"{site.name}: sspm init: {out.stderr[-2000:]}")
        print(f"   sspm init: {' / '.join(l.strip() for l in out.stdout.splitlines())}", flush=True)
        for service in SERVICES:
            env, command, probes, mounts = deployment[service]
            penv = container_env(site, env, f"SSPM__SERVICES__{service.upper()}__DATABASE_URL", mounts)
            if len(command) != 1 or command[0] != f"sspm-{service}":
                fail(f"{site.name} {service}: command {command}")
            # Every public key, and this service's private key only.
            held = sorted(p.name for p in Path(penv["SSPM__AUTH__SERVICE_KEYS_DIR"]).iterdir())
            want = sorted([f"{s}.pub.pem" for s in SERVICES] + [f"{service}.key.pem"])
            if held != want:
                fail(f"{site.name} {service}: its key directory holds {held}, not {want}")
            logs[service] = open(site.work / f"{site.name}-{service}.log", "w+")
            procs[service] = subprocess.Popen(
                [str(site.bin / command[0])], env=penv, cwd=site.work, stdout=logs[service], stderr=subprocess.STDOUT
            )
            deadline = time.time() + 60
            while True:
                results = [run_probe(site, p, penv) for p in probes]
                if all(r.returncode == 0 and r.stdout.strip() == "SERVING" for r in results):
                    break
                if procs[service].poll() is not None or time.time() > deadline:
                    logs[service].seek(0)
                    fail(f"{site.name} {service} did not become healthy: {[r.stderr for r in results]}\n{logs[service].read()}")
                time.sleep(0.3)
            print(f"   {service}: probes SERVING ({len(probes)})", flush=True)

        req_env = container_env(site, deployment["request"][0], "SSPM__SERVICES__REQUEST__DATABASE_URL",
                                deployment["request"][3])
        # A user token of the identity provider; no development token is minted in production.
        audience = req_env["SSPM__AUTH__USERS__AUDIENCE"]
        token = site.issuer.token("rep@sspm.example", aud=audience)
        out = subprocess.run([str(site.bin / "sspm"), "token", "rep@sspm.example"], env=req_env,
                             capture_output=True, text=True)
        if out.returncode == 0:
            fail(f"{site.name}: sspm token minted a development token in production: {out.stdout}")
        target = f"localhost:{site.port('request')}"
        cacert = str(site.certs / "ca.pem")
        # The request service asks authorization (over TLS, balanced on Kubernetes): a clear
        # refusal, not UNAVAILABLE or INTERNAL, proves the internal hop works.
        out = subprocess.run([grpcurl, "-cacert", cacert, "-H", f"authorization: Bearer {token}",
                              "-d", '{"business_unit_id":"bu-not-registered"}', target,
                              "sspm.v1.PortRequestService/GetPortLimits"], capture_output=True, text=True)
        text = out.stdout + out.stderr
        if out.returncode == 0 or not re.search(r"Code: (PermissionDenied|NotFound)", text):
            fail(f"{site.name}: a call through the request service to authorization: {text}")
        code = re.search(r"Code: \w+", text).group(0)
        print(f"   provider token, request -> authorization over TLS: {code}", flush=True)
        # A token signed by another key under the provider's kid is refused.
        now = int(time.time())
        forged = jwt.encode({"iss": site.issuer.url, "aud": audience, "sub": "rep@sspm.example", "iat": now,
                             "exp": now + 300}, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                            algorithm="RS256", headers={"kid": site.issuer.kid})
        out = subprocess.run([grpcurl, "-cacert", cacert, "-H", f"authorization: Bearer {forged}", "-d",
                              '{"business_unit_id":"bu-classics"}', target, "sspm.v1.PortRequestService/GetPortLimits"],
                             capture_output=True, text=True)
        if "Code: Unauthenticated" not in out.stdout + out.stderr:
            fail(f"{site.name}: a forged provider token: {out.stdout}{out.stderr}")
        print("   forged provider token: Unauthenticated; sspm token in production: refused", flush=True)
        out = subprocess.run([grpcurl, "-cacert", cacert, "-d", "{}", target,
                              "sspm.v1.PortRequestService/ListPortChangeRequests"], capture_output=True, text=True)
        if "Code: Unauthenticated" not in out.stdout + out.stderr:
            fail(f"{site.name}: a call without a token: {out.stdout}{out.stderr}")
        out = subprocess.run([grpcurl, "-plaintext", target, "list"], capture_output=True, text=True)
        if out.returncode == 0:
            fail(f"{site.name}: plaintext is accepted: {out.stdout}")
        print("   no token: Unauthenticated; plaintext: refused", flush=True)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        codes = {}
        for service, p in procs.items():
            try:
                codes[service] = p.wait(timeout=25)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[service] = "killed after 25 s"
        site.cleanup()
    if any(c != 0 for c in codes.values()):
        for service, log in logs.items():
            log.seek(0)
            print(f"--- {service}\n{log.read()}")
        fail(f"{site.name}: not a clean stop on SIGTERM: {codes}")
    print("   SIGTERM: every service stopped cleanly", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="directory of the sspm binaries")
    parser.add_argument("--postgres", required=True, help="URL of a PostgreSQL database with CREATEDB rights")
    args = parser.parse_args()
    grpcurl = subprocess.run(["which", "grpcurl"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        for name, read in (("compose", compose), ("kubernetes", kubernetes)):
            work = Path(tmp) / name
            work.mkdir()
            site = Site(name, args, work)
            deployment = read(site)
            check(site, deployment, grpcurl)

        # The example secrets are placeholders: a service given them refuses to start, saying why.
        empty = Path(tmp) / "example-keys"
        empty.mkdir()
        for s in SERVICES:
            (empty / f"{s}.pub.pem").write_text("")
        (empty / "request.key.pem").write_text("")
        env = container_env(site, deployment["request"][0], "SSPM__SERVICES__REQUEST__DATABASE_URL", {"/keys": empty})
        out = subprocess.run([str(Path(args.bin) / "sspm-request")], env=env, capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 or "pub.pem" not in out.stderr:
            fail(f"the empty example service keys: {out.stderr}")
        print("== secrets.example.yaml's empty values are refused: the empty key file named", flush=True)
        # Production without an identity provider or service keys refuses to start.
        env = dict(clean_env(), SSPM__PROFILE="production")
        out = subprocess.run([str(Path(args.bin) / "sspm-request")], env=env, capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 or "auth.service_keys_dir" not in out.stderr:
            fail(f"production without identity settings: {out.stderr}")
        print("== production without identity settings: refused, naming the key", flush=True)
    print("ok: docker-compose and Kubernetes configurations start the real services")


if __name__ == "__main__":
    main()
