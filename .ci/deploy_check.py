#!/usr/bin/env python3
"""Runs the real SSPM binaries with the configuration of docker-compose.yml and of
deploy/kubernetes, on this machine: each container's environment, command and health probes,
with hosts, ports, certificate paths and databases moved here. Proves the deployments'
configuration is accepted by the services, that the probes report SERVING, that the services
call each other over TLS (with DNS load balancing on Kubernetes), and that they stop cleanly.

What cannot be checked without a container engine (the image build, the collector, Jaeger,
the kubelet) is left to `docker compose up` / a cluster.
"""

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """This machine standing in for the deployment's network, volumes and database server."""

    def __init__(self, name, args, work):
        self.name = name
        self.bin = Path(args.bin)
        self.work = work
        self.postgres = args.postgres
        self.ports = {p: free_port() for p in list(PORTS.values()) + list(ADMIN_PORTS.values())}
        self.certs = work / "certs"
        self.signing_key = secrets.token_urlsafe(48)
        self.databases = {s: f"sspm_deploy_{name}_{s}" for s in SERVICES}
        self.paths = {}  # paths in the container -> files here

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
        out = subprocess.run(
            [self.bin / "sspm", "certs", "--out", self.certs], capture_output=True, text=True, env=clean_env()
        )
        if out.returncode != 0:
            fail(f"sspm certs: {out.stderr}")
        base = self.postgres.rsplit("/", 1)[0]
        for db in self.databases.values():
            for sql in (f'DROP DATABASE IF EXISTS "{db}"', f'CREATE DATABASE "{db}"'):
                subprocess.run(["psql", self.postgres, "-qc", sql], check=True, capture_output=True)
        return base

    def cleanup(self):
        for db in self.databases.values():
            subprocess.run(["psql", self.postgres, "-qc", f'DROP DATABASE IF EXISTS "{db}"'], capture_output=True)


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("SSPM_", "OTEL_", "RUST_BACKTRACE"))}


def container_env(site, env, database_key):
    """The container's environment here: rewritten, its database on this machine's server
    (`database_key` names the one database key it may set; "*" allows every service's)."""
    out = clean_env()
    for key, value in env.items():
        if key == "OTEL_EXPORTER_OTLP_ENDPOINT":
            continue  # no collector on this machine: export stays off
        out[key] = site.rewrite(value)
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
    env = dict(os.environ, SSPM_SIGNING_KEY=site.signing_key, SSPM_DB_PASSWORD="unused-here")
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
    out = {}
    for service in SERVICES:
        s = cfg[service]
        test = s["healthcheck"]["test"]
        if test[0] != "CMD":
            fail(f"compose {service}: healthcheck must be an exec form CMD: {test}")
        if s["environment"].get("SSPM__SERVICES__" + service.upper() + "__DATABASE_URL", "").find(f"/{service}") < 0:
            fail(f"compose {service}: not on its own database")
        out[service] = (s["environment"], s["command"], [test[1:]])
    init = cfg.get("init")
    if not init or init.get("profiles") != ["init"]:
        fail("compose: an `init` service in the `init` profile (run by hand, never by `up`)")
    out["init"] = (init["environment"], init["command"])
    return out


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
    secret_values = {"signing-key": site.signing_key}
    secret_values.update({f"{s}-database-url": "set-below" for s in SERVICES})
    example = [d for d in yaml.safe_load_all((kdir / "secrets.example.yaml").read_text()) if d]
    example_keys = {d["metadata"]["name"]: set(d["stringData"]) for d in example}
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
        volumes = {v["name"]: v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"]}
        if volumes.get("certs") != "sspm-tls" or mounts.get("certs") != "/certs":
            fail(f"kubernetes {name}: /certs must be the sspm-tls secret")
        probes = [c[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        out[service] = (env, c["command"], probes)
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
        penv = container_env(site, deployment[first][0], f"SSPM__SERVICES__{first.upper()}__DATABASE_URL")
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
            env, command, probes = deployment[service]
            penv = container_env(site, env, f"SSPM__SERVICES__{service.upper()}__DATABASE_URL")
            if len(command) != 1 or command[0] != f"sspm-{service}":
                fail(f"{site.name} {service}: command {command}")
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

        req_env = container_env(site, deployment["request"][0], "SSPM__SERVICES__REQUEST__DATABASE_URL")
        token = subprocess.run([str(site.bin / "sspm"), "token", "rep@sspm.example"], env=req_env,
                               capture_output=True, text=True, check=True).stdout.strip()
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
        print(f"   request -> authorization over TLS: {code}", flush=True)
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
            check(site, read(site), grpcurl)

        # The example secrets are placeholders: a service given them refuses to start, saying why.
        site = Site("example-secret", args, Path(tmp))
        env = dict(clean_env(), SSPM__PROFILE="production", SSPM__AUTH__SIGNING_KEY="")
        out = subprocess.run([str(site.bin / "sspm-request")], env=env, capture_output=True, text=True, timeout=30)
        if out.returncode == 0 or "auth.signing_key" not in out.stderr:
            fail(f"the empty example signing key: {out.stderr}")
        print("== secrets.example.yaml's empty values are refused: auth.signing_key named", flush=True)
    print("ok: docker-compose and Kubernetes configurations start the real services")


if __name__ == "__main__":
    main()
