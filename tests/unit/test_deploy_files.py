"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/) read against the project they deploy.

No container engine or registry is reachable where the tests run, so the files are checked by reading
them: every program they start is a console script of pyproject.toml (its target importable) or an
importable module; every environment variable given to the project's image is one the typed settings
read (the names are taken from the pydantic settings classes themselves, prefixes, aliases and nested
sections included) or one of Bytewax's runner (read from its source); every port is the one the program
serves on (its setting's default, or the value the file sets); every recovery directory a flow runs with
is a volume of its own; every file the Dockerfile copies exists and is in the build context. And what a
Bytewax cluster on Kubernetes needs to agree on: replicas = BYTEWAX_ADDRESSES = the recovery partitions.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import json
import pkgutil
import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bytewax.run
import pytest
import yaml
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

from tests.support.source import parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
IMAGE = "tickstock-streams"  # the project's image: compose's `image` and the manifests' (kustomize rewrites it)
PACKAGES = ("schemas", "connectors", "flows", "infra")
# Which variable sets the port each service program serves /healthz, /readyz and /metrics on.
PORT_VARIABLE = {
    "tickstock-bar-flow": "BAR_FLOW_OPS_PORT",
    "tickstock-detection-flow": "DETECTION_FLOW_OPS_PORT",
    "tickstock-bridge": "BRIDGE_OPS_PORT",
    "tickstock-gateway": "GATEWAY_PORT",
}
FLOWS = {"tickstock-bar-flow", "tickstock-detection-flow"}
# The interpreter's and pip's own variables, which only the image definition sets.
RUNTIME_VARIABLES = {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "HOME"}
SECRET_WORDS = ("SECRET", "PASSWORD", "API_KEY", "TOKEN", "DATABASE_URL")


# --- what the project has ------------------------------------------------------------------------


@cache
def scripts() -> dict[str, str]:
    """pyproject's [project.scripts]: console entry point -> `module:function`."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text()).get("project", {}).get("scripts", {})


def _modules() -> Iterator[str]:
    for package in PACKAGES:
        yield package
        path = [str(ROOT / package)]
        for info in pkgutil.walk_packages(path, prefix=f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # a program's __main__ runs it on import
                yield info.name


@cache
def settings_classes() -> tuple[type[BaseSettings], ...]:
    """Every pydantic settings class the project defines (importing every module of its packages)."""
    found: dict[str, type[BaseSettings]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__.split(".")[0] in PACKAGES:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return tuple(found[key] for key in sorted(found))


def env_names(cls: type[BaseModel], prefix: str, delimiter: str | None) -> dict[str, Any]:
    """The environment variables a settings class reads, each with its field (pydantic-settings' rules)."""
    names: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            own = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            own = [alias]
        else:  # no alias: the prefix applies
            own = [f"{prefix}{name}"]
        for variable in own:
            names[variable.upper()] = field
        annotation = field.annotation
        if delimiter and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for variable, sub in env_names(annotation, "", None).items():
                names[f"{own[0]}{delimiter}{variable}".upper()] = sub
    return names


@cache
def setting_variables() -> dict[str, Any]:
    """Every variable some settings class reads -> its field (for the default)."""
    variables: dict[str, Any] = {}
    for cls in settings_classes():
        config = cls.model_config
        variables.update(env_names(cls, config.get("env_prefix") or "", config.get("env_nested_delimiter")))
    return variables


@cache
def bytewax_variables() -> frozenset[str]:
    """The BYTEWAX_* variables Bytewax's runner reads, from its source."""
    return frozenset(re.findall(r"\"(BYTEWAX_[A-Z_]+)\"", Path(bytewax.run.__file__).read_text()))


@cache
def project_variables() -> frozenset[str]:
    from flows.detect.settings import CONFIG_FILE_VARIABLE  # a variable naming a file, read beside the settings

    return frozenset(setting_variables()) | bytewax_variables() | {CONFIG_FILE_VARIABLE}


@cache
def served_paths() -> frozenset[str]:
    """The HTTP paths of the form /name that appear as string constants in the services' code."""
    paths = set()
    for package in ("connectors", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"/[a-z]+", node.value):
                    paths.add(node.value)
    return frozenset(paths)


def program(argv: list[str]) -> str:
    """The program a command starts (`tickstock-...` or `python -m module`), checked to exist."""
    assert argv, "an empty command"
    if argv[0] == "python":
        assert argv[1:2] == ["-m"] and len(argv) > 2, f"{argv}: python only as `python -m module`"
        module = argv[2]
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{argv}: no module {module}"
        if spec.submodule_search_locations is not None:  # a package runs as its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{argv}: {module} has no __main__"
        return f"python -m {module}"
    assert argv[0] in scripts(), (
        f"{argv[0]} is not a console entry point in pyproject.toml [project.scripts]: {sorted(scripts())}"
    )
    module, _, function = scripts()[argv[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), function, None)), f"{argv[0]} = {scripts()[argv[0]]}: not a function"
    return argv[0]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def served_port(name: str, env: dict[str, str]) -> int:
    """The port `name` serves on with `env`: the value set, else its setting's default."""
    variable = PORT_VARIABLE[name]
    assert variable in setting_variables(), f"{variable} (the port of {name}) is read by no settings class"
    return int(env[variable]) if variable in env else int(setting_variables()[variable].default)


def check_variables(env: dict[str, str], where: str) -> None:
    unknown = sorted(set(env) - project_variables())
    assert not unknown, f"{where}: variables no settings class (nor Bytewax) reads: {unknown}"


def check_flow_command(argv: list[str], mounts: set[str], where: str) -> str:
    """A flow runs with a recovery directory that is a mount, and with the snapshot and backup intervals."""
    directory = option(argv, "-r")
    assert directory is not None, f"{where}: a flow without a recovery directory (-r) cannot resume"
    assert directory in mounts, f"{where}: recovery directory {directory} is not a volume mount ({sorted(mounts)})"
    assert option(argv, "-s") and option(argv, "-b") is not None, f"{where}: -r needs -s and -b (bytewax.run refuses it)"
    return directory


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def _json_or_words(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile():
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(arguments))  # type: ignore[arg-type]
    return env


def docker_volumes() -> set[str]:
    return {path for instruction, arguments in dockerfile() if instruction == "VOLUME" for path in _json_or_words(arguments)}


def test_the_image_is_a_debian_python_slim_image_of_a_supported_python() -> None:
    args = {}
    bases = []
    for instruction, arguments in dockerfile():
        if instruction == "ARG" and "=" in arguments:
            key, value = arguments.split("=", 1)
            args[key] = value
        elif instruction == "FROM":
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], arguments.split()[0]))
    requires = re.fullmatch(r">=3\.(\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert requires, "requires-python is not of the form >=3.N"
    assert bases
    for base in bases:
        match = re.fullmatch(r"python:3\.(\d+)-slim-(bookworm|trixie)", base)
        assert match, f"{base}: not an official Debian slim Python image"
        assert int(match[1]) >= int(requires[1]), f"{base}: older than requires-python"


def test_every_file_the_image_copies_exists_and_is_in_the_build_context() -> None:
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copies = [shlex.split(arguments) for instruction, arguments in dockerfile() if instruction == "COPY"]
    sources = [source for words in copies if not any(w.startswith("--from") for w in words) for source in words[:-1]]
    assert sources, "the Dockerfile copies nothing from the project"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the project"
        name = source.rstrip("/")
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), f"COPY {source}: excluded by .dockerignore"
    # ... and what the build needs of the package is all there: every package and the build backend's inputs
    copied = {source.rstrip("/") for source in sources}
    assert set(PACKAGES) | {"pyproject.toml"} <= copied


def test_the_image_runs_as_a_user_and_holds_no_secret() -> None:
    users = [arguments for instruction, arguments in dockerfile() if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the programs must not run as root"
    env = docker_env()
    check_variables({k: v for k, v in env.items() if k not in RUNTIME_VARIABLES}, "Dockerfile ENV")
    assert not [name for name in env if any(word in name for word in SECRET_WORDS)], "a secret in the image"
    assert not [a for i, a in dockerfile() if i == "ARG" and any(word in a.upper() for word in SECRET_WORDS)]


def test_the_image_default_command_exists_and_its_state_directories_are_volumes_it_owns() -> None:
    command = [_json_or_words(a) for i, a in dockerfile() if i == "CMD"][-1]
    assert program(command) in PORT_VARIABLE
    volumes = docker_volumes()
    assert docker_env()["BRIDGE_SPOOL_DIR"] in volumes
    created = " ".join(a for i, a in dockerfile() if i == "RUN" and "mkdir" in a)
    for volume in volumes:  # created (and chowned) in the image, so a fresh named volume belongs to the user
        assert volume in created, f"VOLUME {volume} is not created in the image"


# --- compose -------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def ours(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == IMAGE


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): interpolated(str(v)) for k, v in env.items()}


def interpolated(value: str) -> str:
    """A compose value with its `${VARIABLE...}` substitutions (secrets from deploy/.env) replaced by a word."""
    return re.sub(r"\$\{[^}]*\}", "substituted", value)


def compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> named volume."""
    mounts = {}
    for entry in service.get("volumes", []):
        volume, path = entry.split(":")[:2]
        assert volume in (compose().get("volumes") or {}), f"volume {volume} is not declared"
        mounts[path] = volume
    return mounts


def test_compose_runs_the_project_image_and_each_dependency_it_names() -> None:
    services = compose()["services"]
    assert {"kafka", "timescaledb", "redis", "topics", "migrate", "bar-flow", "detection-flow", "gateway"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
        if ours(service):
            assert service["build"]["dockerfile"] == "Dockerfile"
            assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
    tag = services["timescaledb"]["image"]
    match = re.fullmatch(r"timescale/timescaledb:(\d+)\.(\d+)\.\d+-pg(\d+)", tag)
    assert match and int(match[3]) >= 15, f"{tag}: the official TimescaleDB image on PostgreSQL 15+"
    # 0004's rollup needs TimescaleDB 2.18+ (statement triggers with transition tables on hypertables)
    assert (int(match[1]), int(match[2])) >= (2, 18)


@pytest.mark.parametrize("name", sorted(n for n, s in yaml.safe_load(COMPOSE.read_text())["services"].items() if ours(s)))
def test_compose_service_commands_variables_ports_and_paths_exist(name: str) -> None:
    service = compose()["services"][name]
    argv = service["command"]
    started = program(argv)
    env = compose_env(service)
    check_variables(env, f"compose {name}")
    mounts = compose_mounts(service)
    if started in FLOWS:
        directory = check_flow_command(argv, set(mounts), f"compose {name}")
        assert directory in docker_volumes(), f"{directory} is no VOLUME of the image"
        init = [
            s
            for n, s in compose()["services"].items()
            if n in service["depends_on"] and ours(s) and s["command"][:3] == ["python", "-m", "infra.recovery"]
        ]
        assert init, f"{name}: no recovery-partition job runs before it"
        assert init[0]["command"][3] == directory and compose_mounts(init[0])[directory] == mounts[directory]
        assert (
            service["depends_on"][next(n for n, s in compose()["services"].items() if s is init[0])]["condition"]
            == "service_completed_successfully"
        )
        assert option(init[0]["command"], "--processes") == "1", "one process per compose service"
    if started in PORT_VARIABLE:
        port = served_port(started, env)
        published = [int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])]
        assert published == [port], f"{name} serves on {port}, publishes {published}"
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and program(test[1:4]) == "python -m infra.healthcheck"
        url = urlsplit(test[4])
        assert url.hostname == "127.0.0.1" and url.port == port, f"{name}: health check on {url.netloc}, serves on {port}"
        assert url.path in served_paths() and url.path in ("/healthz", "/readyz")
    for variable, host in (("KAFKA_BOOTSTRAP_SERVERS", None), ("DATABASE_URL", None), ("REDIS_URL", None)):
        if variable in env:
            value = env[variable]
            host = urlsplit(value).hostname if "://" in value else value.split(":")[0]
            assert host in compose()["services"], f"{name}: {variable} points at {host}, not a compose service"


def test_compose_offers_the_synthetic_feed_and_the_bridge_as_profiles() -> None:
    services = compose()["services"]
    feeds = {n: s for n, s in services.items() if ours(s) and s["command"][0] in ("tickstock-synthetic", "tickstock-bridge")}
    assert sorted(s["command"][0] for s in feeds.values()) == ["tickstock-bridge", "tickstock-synthetic"]
    for service in feeds.values():
        assert len(service.get("profiles", [])) == 1
    bridge = next(s for s in feeds.values() if s["command"][0] == "tickstock-bridge")
    spool = compose_env(bridge)["BRIDGE_SPOOL_DIR"]
    assert spool in compose_mounts(bridge) and spool in docker_volumes()


# --- Kubernetes ----------------------------------------------------------------------------------


@cache
def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables: its ConfigMaps' data, then its own entries (a value or a reference)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in by_kind("ConfigMap"), f"no ConfigMap {name}"
        env.update({k: str(v) for k, v in by_kind("ConfigMap")[name]["data"].items()})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            reference = entry["valueFrom"]
            if "secretKeyRef" in reference:
                assert reference["secretKeyRef"]["key"] == entry["name"], "secret keys are named as their variables"
            env[entry["name"]] = f"<{next(iter(reference))}>"
    return env


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']} {doc['metadata']['name']}", doc)
        for doc in manifests()
        if doc["kind"] in ("StatefulSet", "Deployment", "Job")
    ]


def test_kustomization_lists_every_manifest_and_the_expected_objects_are_there() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert [image["name"] for image in kustomization["images"]] == [IMAGE]
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests()}
    assert {("StatefulSet", "tickstock-bar-flow"), ("StatefulSet", "tickstock-detection-flow"), ("Deployment", "tickstock-gateway"),
            ("Deployment", "tickstock-bridge"), ("Job", "tickstock-migrate"), ("Job", "tickstock-topics")} <= kinds  # fmt: skip
    assert not by_kind("Secret"), "no Secret in the repository: the manifests reference one created at deploy time"


@pytest.mark.parametrize("where", [w for w, _ in workloads()])
def test_k8s_containers_commands_variables_ports_probes_and_volumes_exist(where: str) -> None:
    workload = dict(workloads())[where]
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (
        workload["kind"] == "Job"
        or workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"] for v in spec.get("volumes", [])} | claims
    for container in spec.get("initContainers", []) + spec["containers"]:
        assert container["image"] == IMAGE
        argv = container["command"] + container.get("args", [])
        started = program(argv)
        env = container_env(container)
        check_variables(env, f"{where} {container['name']}")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert set(mounts.values()) <= volumes, f"{where}: mounts of undeclared volumes"
        ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container.get("ports", [])}
        if started in FLOWS:
            directory = check_flow_command(argv, set(mounts), where)
            assert mounts[directory] in claims, f"{where}: the recovery directory must be a volume per pod (volumeClaimTemplates)"
            assert directory in docker_volumes()
        if started in PORT_VARIABLE:
            port = served_port(started, env)
            assert port in ports.values(), f"{where}: serves on {port}, declares {ports}"
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = container[probe]["httpGet"]
                assert get["path"] == path and path in served_paths()
                assert ports.get(get["port"], get["port"]) == port, f"{where}: {probe} on {get['port']}, serves on {port}"
        else:
            assert workload["kind"] in ("Job", "StatefulSet"), f"{where}: {started} serves no health endpoint"


@pytest.mark.parametrize("name", ["tickstock-bar-flow", "tickstock-detection-flow"])
def test_a_flow_statefulset_is_one_bytewax_cluster_with_a_partition_per_pod(name: str) -> None:
    statefulset = by_kind("StatefulSet")[name]
    spec = statefulset["spec"]
    replicas = spec["replicas"]
    assert spec["podManagementPolicy"] == "Parallel", "every process of a Bytewax cluster must start"
    assert spec["updateStrategy"]["type"] == "OnDelete", "a cluster is replaced as a whole, not pod by pod"
    service = by_kind("Service")[spec["serviceName"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    (container,) = pod_spec(statefulset)["containers"]
    (init,) = pod_spec(statefulset)["initContainers"]
    for part in (container, init):
        entries = {e["name"]: e for e in part["env"]}
        assert entries["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert entries["BYTEWAX_STATEFULSET_NAME"]["value"] == name
    assert int(option(init["command"], "--processes") or 0) == replicas
    assert init["command"][3] == option(container["command"], "-r")
    addresses = container_env(container)["BYTEWAX_ADDRESSES"].split(";")
    cluster_port = {p["name"]: p["containerPort"] for p in container["ports"]}["cluster"]
    assert addresses == [f"{name}-{i}.{spec['serviceName']}:{cluster_port}" for i in range(replicas)]
    assert container_env(container).get("OPS_PORT_PER_PROCESS") == "false", "one process per pod: the base port"
    assert "OPS_PORT_PER_PROCESS" in setting_variables()


def test_k8s_services_select_pods_and_target_their_ports() -> None:
    pods = [(doc["spec"]["template"]["metadata"]["labels"], pod_spec(doc)["containers"]) for _, doc in workloads()]
    for name, service in by_kind("Service").items():
        matching = [containers for labels, containers in pods if service["spec"]["selector"].items() <= labels.items()]
        assert matching, f"Service {name} selects no pod"
        declared = {p.get("name"): p["containerPort"] for c in matching[0] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in declared or target in declared.values(), f"Service {name}: no container port {target}"
            assert declared.get(target, target) == port["port"], f"Service {name}: port {port['port']} -> {target}"


def test_the_bridge_runs_once_and_keeps_its_spool() -> None:
    bridge = by_kind("Deployment")["tickstock-bridge"]
    assert bridge["spec"]["replicas"] == 1 and bridge["spec"]["strategy"]["type"] == "Recreate"
    (container,) = pod_spec(bridge)["containers"]
    spool = container_env(container)["BRIDGE_SPOOL_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == spool]
    (volume,) = [v for v in pod_spec(bridge)["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] in by_kind("PersistentVolumeClaim")
    stop = float(container_env(container).get("BRIDGE_STOP_TIMEOUT_S", setting_variables()["BRIDGE_STOP_TIMEOUT_S"].default))
    assert pod_spec(bridge)["terminationGracePeriodSeconds"] > stop


# --- the checks themselves -----------------------------------------------------------------------


def test_the_variable_names_come_from_the_settings_classes() -> None:
    variables = setting_variables()
    # a plain field, a prefixed one, an aliased one, a nested section, and Bytewax's own
    assert {"KAFKA_BOOTSTRAP_SERVERS", "GATEWAY_MAX_QUEUE", "MASSIVE_API_KEY", "POLYGON_API_KEY", "DETECT_ENABLED"} <= set(
        variables
    )
    assert any(name.startswith("DETECT_INDICATORS__") for name in variables)
    assert "GATEWAY_REDIS_URL" in variables and "REDIS_URL" in variables
    assert {"BYTEWAX_ADDRESSES", "BYTEWAX_POD_NAME", "BYTEWAX_STATEFULSET_NAME"} <= bytewax_variables()
    with pytest.raises(AssertionError, match="KAFKA_BOOTSTRAP_SERVER"):
        check_variables({"KAFKA_BOOTSTRAP_SERVER": "x:9092"}, "a typo")
    assert served_port("tickstock-gateway", {}) == 8765 and served_port("tickstock-gateway", {"GATEWAY_PORT": "1"}) == 1


def test_a_missing_program_or_module_is_caught() -> None:
    with pytest.raises(AssertionError, match="not a console entry point"):
        program(["tickstock-nonexistent"])
    with pytest.raises(AssertionError, match="no module"):
        program(["python", "-m", "infra.nonexistent"])
    assert program(["python", "-m", "infra.recovery", "/x"]) == "python -m infra.recovery"


def test_the_image_exposes_the_ports_its_services_serve_on() -> None:
    exposed = {int(port) for i, a in dockerfile() if i == "EXPOSE" for port in a.split()}
    served = {
        served_port(program(s["command"]), compose_env(s))
        for s in compose()["services"].values()
        if ours(s) and s["command"][0] in PORT_VARIABLE
    }
    assert exposed == served
