"""`make deploy-check`: the Helm chart linted, rendered and validated offline, and its wiring checked against the code.

No cluster, no helm binary: `helm-python-sdk` runs the Helm v4 engine (lint, render) in process, and
`kubernetes-validate` checks every rendered object against the Kubernetes OpenAPI schemas (strict: unknown
fields fail) for the oldest and the newest Kubernetes the chart claims. Custom resources (ServiceMonitor,
InferenceService) have no schema there: their structure is checked here, minimally. Then the wiring:

- gateway probes hit routes the gateway really serves, on the container port the gateway listens on;
- every RERANKER_* variable the chart sets names a field of gateway.config.Settings, and its value validates;
- the gateway's RERANKER_TRITON_URL names the headless Triton Service and its port for the protocol;
- Triton's --model-config-name is a config the exporter writes, its ports and probes match its Services;
- Services, ServiceMonitors, PDBs and HPAs select or target what the chart renders;
- the HPAs' custom metrics are produced by the prometheus-adapter rules, from metrics that exist.

    python -m deploy.check [--repository model_repository]     # exit 1 and a list of problems on failure
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "reranker"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
ADAPTER = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml kubeVersion >=1.25, and the newest schema we have
RELEASE, NAMESPACE = "rr", "search"
# Triton's own metrics the adapter rule divides (Triton 2.51: microsecond counters per model).
TRITON_METRICS = {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"}
# Where the exporter's code names the configs/<name>.pbtxt it writes (used when no exported repository is given).
EXPORTER_SOURCES = ROOT / "export"

# name -> (values file, overrides): the two shipped values files, and the switches they leave off.
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpu": ("values.yaml", {}),
    "cpu": ("values-cpu.yaml", {}),
    "gpu, triton.mode=cpu": ("values.yaml", {"triton": {"mode": "cpu"}}),
    "gpu, export job, API keys": (
        "values.yaml",
        {"exportJob": {"enabled": True}, "gateway": {"apiKeys": {"keys": ["key-1", "key-2"]}}},
    ),
    "cpu, external Triton (KServe)": (
        "values-cpu.yaml",
        {"gateway": {"tritonUrl": "reranker-triton-predictor.search.svc:9000"}},
    ),
    "cpu, a models file": (
        "values-cpu.yaml",
        {
            "gateway": {
                "settings": {"models": "reranker,qwen3"},
                "modelsFile": '[models.reranker]\naliases = ["small"]\n\n[models.qwen3]\nrequest_timeout_s = 60\n',
            }
        },
    ),
    "gpu, object store, existing key Secret": (
        "values.yaml",
        {
            "modelRepository": {
                "source": "objectStore",
                "objectStore": {"url": "s3://bucket/model_repository", "credentialsSecret": "s3-credentials"},
            },
            "gateway": {"apiKeys": {"existingSecret": "reranker-keys"}},
        },
    ),
}


@dataclass
class Rendered:
    scenario: str
    objects: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # what the chart was given

    def kinds(self) -> Counter[str]:
        return Counter(obj["kind"] for obj in self.objects)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def component(self, kind: str, component: str) -> dict[str, Any] | None:
        for obj in self.of_kind(kind):
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component:
                return obj
        return None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_values(values_file: str, overrides: dict[str, Any]) -> dict[str, Any]:
    values = yaml.safe_load((CHART / values_file).read_text()) or {}
    return merge(values, overrides)


# --- Helm ---------------------------------------------------------------------------------------------
def lint(values: dict[str, Any]) -> list[str]:
    """`helm lint --strict` with these values; info messages (e.g. "icon is recommended") are not problems."""
    import helm_python as helm

    problems = []
    for version in KUBE_VERSIONS:
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{version}")
        problems += [f"lint: {error}" for error in report.get("errors", [])]
        problems += [
            f"lint ({m['path']}): {m['error']}"
            for m in report.get("messages", [])
            if m.get("severity", 0) >= 2
        ]
    return sorted(set(problems))


def render(values: dict[str, Any], scenario: str = "") -> Rendered:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    rendered = Rendered(scenario, values=values)
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                rendered.objects.append(document)
    return rendered


# --- schemas ------------------------------------------------------------------------------------------
def validate_objects(objects: list[dict[str, Any]]) -> list[str]:
    """Kubernetes schemas (strict) for built-in kinds; our own minimal structure checks for custom resources."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        custom = CUSTOM_CHECKS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if custom is not None:
            problems += [f"{where}: {p}" for p in custom(obj)]
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{where}: no Kubernetes {version} schema for {obj.get('apiVersion')}")
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.append(f"{where} (Kubernetes {version}) at {path or '.'}: {exc.message}")
    return problems


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    name = obj.get("metadata", {}).get("name", "")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
        return [f"metadata.name {name!r} is not a DNS-1123 label"]
    return []


def check_service_monitor(obj: dict[str, Any]) -> list[str]:
    """monitoring.coreos.com/v1 ServiceMonitor: the fields the Prometheus Operator needs, typed."""
    problems = _metadata_problems(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec missing"]
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    if unknown:
        problems.append(f"spec has fields this check does not know: {sorted(unknown)}")
    labels = spec.get("selector", {}).get("matchLabels")
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        problems.append("spec.selector.matchLabels must be a non-empty map of strings")
    names = spec.get("namespaceSelector", {}).get("matchNames", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("spec.namespaceSelector.matchNames must be a list of strings")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, "spec.endpoints must be a non-empty list"]
    for i, endpoint in enumerate(endpoints):
        if not isinstance(endpoint.get("port"), str):
            problems.append(f"spec.endpoints[{i}].port must be a Service port name")
        if not str(endpoint.get("path", "/metrics")).startswith("/"):
            problems.append(f"spec.endpoints[{i}].path must start with /")
        if "interval" in endpoint and not _DURATION.match(str(endpoint["interval"])):
            problems.append(f"spec.endpoints[{i}].interval {endpoint['interval']!r} is not a duration")
    return problems


def check_inference_service(obj: dict[str, Any]) -> list[str]:
    """serving.kserve.io/v1beta1 InferenceService with a Triton predictor (modelFormat triton)."""
    problems = _metadata_problems(obj)
    model = obj.get("spec", {}).get("predictor", {}).get("model")
    if not isinstance(model, dict):
        return [*problems, "spec.predictor.model missing"]
    if model.get("modelFormat", {}).get("name") != "triton":
        problems.append("spec.predictor.model.modelFormat.name must be triton")
    if not re.match(r"^(s3|gs|https?|pvc)://.+", str(model.get("storageUri", ""))):
        problems.append("spec.predictor.model.storageUri must be an s3://, gs://, http(s):// or pvc:// URI")
    if model.get("protocolVersion") not in (None, "v1", "v2", "grpc-v2"):
        problems.append(f"protocolVersion {model.get('protocolVersion')!r} unknown")
    for key in ("minReplicas", "maxReplicas"):
        value = obj["spec"]["predictor"].get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            problems.append(f"spec.predictor.{key} must be a non-negative integer")
    for i, port in enumerate(model.get("ports", [])):
        if not isinstance(port.get("containerPort"), int):
            problems.append(f"spec.predictor.model.ports[{i}].containerPort must be an integer")
    return problems


CUSTOM_CHECKS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("serving.kserve.io/v1beta1", "InferenceService"): check_inference_service,
}


# --- wiring -------------------------------------------------------------------------------------------
def gateway_routes() -> set[str]:
    """The paths the real gateway app serves (built without loading a model)."""
    from gateway.app import create_app
    from gateway.config import load_settings

    app = create_app(load_settings(preload=False))
    return {getattr(route, "path", "") for route in app.routes}


def exporter_config_names(repository: Path | None) -> set[str]:
    """Names --model-config-name may take: configs/<name>.pbtxt in every model of an exported repository, or
    (no repository at hand) the configs/*.pbtxt names the exporter's source writes."""
    if repository is not None:
        models = [d for d in repository.iterdir() if (d / "config.pbtxt").is_file()]
        if not models:
            raise ValueError(f"{repository} holds no exported model")
        per_model = [{p.stem for p in (m / "configs").glob("*.pbtxt")} for m in models]
        return set.intersection(*per_model)
    pattern = re.compile(r'configs(?:\s*/\s*"|/)([\w.-]+)\.pbtxt')
    return {name for path in EXPORTER_SOURCES.glob("*.py") for name in pattern.findall(path.read_text())}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port(container: dict[str, Any], name: str) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == name:
            return int(port["containerPort"])
    return None


def check_gateway(r: Rendered, routes: set[str]) -> list[str]:
    from pydantic import ValidationError

    from gateway.config import Settings

    problems: list[str] = []
    deployment = r.component("Deployment", "gateway")
    if deployment is None:
        return ["no gateway Deployment"]
    pod = deployment["spec"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
    env = _env(container)
    port = _port(container, "http")
    if port is None or env.get("RERANKER_PORT", {}).get("value") != str(port):
        problems.append(
            f"gateway listens on RERANKER_PORT={env.get('RERANKER_PORT')} but its http port is {port}"
        )
    if env.get("RERANKER_HOST", {}).get("value") != "0.0.0.0":
        problems.append("gateway must bind 0.0.0.0 in a pod (RERANKER_HOST)")
    for probe, path in (
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/health"),
    ):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", port):
            problems.append(f"gateway {probe} is {get}, expected {path} on the http port")
        if get.get("path") not in routes:
            problems.append(f"gateway {probe} path {get.get('path')!r} is not a gateway route")

    fields = Settings.model_fields
    literal: dict[str, Any] = {}
    for name, item in env.items():
        if not name.startswith("RERANKER_"):
            continue
        key = name.removeprefix("RERANKER_").lower()
        if key not in fields:
            problems.append(f"{name} is not a gateway setting (gateway.config.Settings has no {key!r})")
        elif "value" in item:
            literal[key] = item["value"]
        elif not item.get("valueFrom", {}).get("secretKeyRef"):
            problems.append(f"{name} has neither a value nor a Secret reference")
    scratch = tempfile.TemporaryDirectory()
    try:
        if "models_file" in literal:  # validate the file the pod will read: the ConfigMap mounted there
            found = mounted_file(r, pod, container, str(literal["models_file"]))
            if found is None:
                problems.append(
                    f"RERANKER_MODELS_FILE={literal['models_file']} is no file of a mounted ConfigMap"
                )
                literal.pop("models_file")
            else:
                local = Path(scratch.name) / "models.toml"
                local.write_text(found)
                literal["models_file"] = str(local)
        settings = Settings(**literal)
    except ValidationError as exc:
        problems += [
            f"RERANKER_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        ]
        settings = None
    finally:
        scratch.cleanup()

    keys = env.get("RERANKER_API_KEYS", {}).get("valueFrom", {}).get("secretKeyRef")
    if keys:
        secret = next((s for s in r.of_kind("Secret") if s["metadata"]["name"] == keys["name"]), None)
        if secret is not None and keys["key"] not in secret.get("stringData", {}):
            problems.append(f"Secret {keys['name']} has no key {keys['key']!r}")
    security = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    if security.get("runAsNonRoot") is not True or security.get("runAsUser", 0) == 0:
        problems.append("gateway must run as a non-root user")
    dockerfile_uid = re.search(r"--uid (\d+)", (ROOT / "gateway" / "Dockerfile").read_text())
    if dockerfile_uid and security.get("runAsUser") != int(dockerfile_uid.group(1)):
        problems.append(
            f"gateway runAsUser {security.get('runAsUser')} != the image's uid {dockerfile_uid.group(1)}"
        )
    repository = env.get("RERANKER_MODEL_REPOSITORY", {}).get("value", "")
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    if not any(repository.startswith(m.rstrip("/") + "/") for m in mounts):
        problems.append(f"RERANKER_MODEL_REPOSITORY={repository} is on no mounted volume ({mounts})")

    triton_service = r.component("Service", "triton")
    url = env.get("RERANKER_TRITON_URL", {}).get("value")
    if triton_service is None:
        external = r.values.get("gateway", {}).get("tritonUrl") or None
        if url != external:
            problems.append(
                f"RERANKER_TRITON_URL={url} without Triton in the chart, expected gateway.tritonUrl"
            )
    elif settings is not None:
        if triton_service["spec"].get("clusterIP") != "None":
            problems.append("the Triton Service must be headless (clusterIP: None) for per-pod balancing")
        wanted_port = next(
            (p["port"] for p in triton_service["spec"]["ports"] if p["name"] == settings.triton_protocol),
            None,
        )
        expected = f"{triton_service['metadata']['name']}.{NAMESPACE}.svc:{wanted_port}"
        if settings.triton_endpoints != [expected]:
            problems.append(
                f"RERANKER_TRITON_URL={url}, expected {expected} (protocol {settings.triton_protocol})"
            )
    return problems


def mounted_file(r: Rendered, pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The text of the ConfigMap key the container sees at `path` (None: no ConfigMap is mounted there)."""
    folder, _, key = path.rpartition("/")
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == folder), None)
    if mount is None:
        return None
    volume: dict[str, Any] = next(
        (v for v in pod["spec"].get("volumes", []) if v["name"] == mount["name"]), {}
    )
    name = volume.get("configMap", {}).get("name")
    config = next((c for c in r.of_kind("ConfigMap") if c["metadata"]["name"] == name), None)
    data = (config or {}).get("data", {})
    return str(data[key]) if key in data else None


def check_triton(r: Rendered, config_names: set[str]) -> list[str]:
    deployment = r.component("Deployment", "triton")
    if deployment is None:
        return []
    problems: list[str] = []
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    flags = _flags(container.get("args", []))
    if "model-config-name" in flags and flags["model-config-name"] not in config_names:
        problems.append(
            f"--model-config-name={flags['model-config-name']} is not a config the exporter writes ({sorted(config_names)})"
        )
    for name in ("http", "grpc", "metrics"):
        if flags.get(f"{name}-port") != str(_port(container, name)):
            problems.append(f"--{name}-port={flags.get(f'{name}-port')} != container port {name}")
    repository = flags.get("model-repository", "")
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    if "://" not in repository and not any(repository.startswith(m.rstrip("/") + "/") for m in mounts):
        problems.append(f"--model-repository={repository} is on no mounted volume")
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http":
            problems.append(f"Triton {probe} is {get}, expected {path} on port http")
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    cpu_mode = flags.get("model-config-name") == "cpu-onnxruntime"
    if cpu_mode == bool(gpus):
        problems.append(f"Triton {'CPU' if cpu_mode else 'GPU'} mode with nvidia.com/gpu limit {gpus}")
    return problems


def check_selection(r: Rendered) -> list[str]:
    """Services, ServiceMonitors, PDBs select pods/Services that exist; HPAs and ports point at real targets."""
    problems: list[str] = []
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in r.of_kind("Deployment")}
    for service in r.of_kind("Service"):
        selector = service["spec"].get("selector", {})
        chosen = [n for n, pod in pods.items() if _matches(selector, pod["metadata"]["labels"])]
        if len(chosen) != 1:
            problems.append(
                f"Service {service['metadata']['name']} selects {chosen}, expected one Deployment"
            )
            continue
        containers = pods[chosen[0]]["spec"]["containers"]
        names = {p["name"] for c in containers for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if port.get("targetPort") not in names:
                problems.append(
                    f"Service {service['metadata']['name']} targets port {port.get('targetPort')!r}"
                )
    for monitor in r.of_kind("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in r.of_kind("Service") if _matches(selector, s["metadata"].get("labels", {}))]
        if len(services) != 1:
            problems.append(f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services")
            continue
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        problems += [
            f"ServiceMonitor {monitor['metadata']['name']} scrapes port {e['port']!r} the Service lacks"
            for e in monitor["spec"]["endpoints"]
            if e["port"] not in ports
        ]
    for pdb in r.of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(_matches(selector, pod["metadata"]["labels"]) for pod in pods.values()):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pods")
    for hpa in r.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in pods:
            problems.append(f"HPA {hpa['metadata']['name']} scales {target}, which is not rendered")
        if (
            "replicas"
            in next(d for d in r.of_kind("Deployment") if d["metadata"]["name"] == target["name"])["spec"]
        ):
            problems.append(f"Deployment {target['name']} sets replicas although an HPA owns them")
    for claim in {
        v["persistentVolumeClaim"]["claimName"]
        for obj in r.objects
        for v in _pod_spec(obj).get("volumes", [])
        if "persistentVolumeClaim" in v
    }:
        if claim not in {p["metadata"]["name"] for p in r.of_kind("PersistentVolumeClaim")}:
            problems.append(f"PersistentVolumeClaim {claim} is mounted but not rendered")
    return problems


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] in ("Deployment", "Job"):
        return dict(obj["spec"]["template"]["spec"])
    return {}


def check_export_job(r: Rendered) -> list[str]:
    problems: list[str] = []
    makefile = (ROOT / "Makefile").read_text()
    for job in r.of_kind("Job"):
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = container.get("command", [])
        if command[:2] != ["make", "export"]:
            problems.append(f"Job {job['metadata']['name']} runs {command}, expected make export")
        if not re.search(r"^export:", makefile, re.MULTILINE):
            problems.append("the Makefile has no export target")
        variables = dict(a.split("=", 1) for a in container.get("args", []) if "=" in a)
        for name in variables:
            if not re.search(rf"\$\({name}\)", makefile):
                problems.append(f"Job passes {name}, which the Makefile does not use")
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        if not any(variables.get("REPO", "").startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"Job writes REPO={variables.get('REPO')} on no mounted volume")
    return problems


def check_autoscaling_metrics(renders: list[Rendered]) -> list[str]:
    """Every custom metric an HPA reads is a name the prometheus-adapter rules expose, from real series."""
    from prometheus_client import REGISTRY

    import gateway.metrics  # noqa: F401  (registers the gateway's metrics)

    problems: list[str] = []
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    exposed = {}
    for rule in rules:
        series = re.match(r"^\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"])
        if series is None or not rule.get("name", {}).get("as"):
            problems.append(f"adapter rule {rule} lacks a series name or name.as")
            continue
        exposed[rule["name"]["as"]] = rule
        for needed in ("<<.GroupBy>>", "<<.LabelMatchers>>"):
            if needed not in rule.get("metricsQuery", ""):
                problems.append(f"adapter rule {rule['name']['as']}: metricsQuery lacks {needed}")
        queried = set(
            re.findall(r"\b(reranker_\w+|nv_inference_\w+)\b", rule["metricsQuery"] + rule["seriesQuery"])
        )
        gateway_names = {m.name for m in REGISTRY.collect()} | {
            s.name for m in REGISTRY.collect() for s in m.samples
        }
        for name in queried:
            if name not in TRITON_METRICS and name not in gateway_names:
                problems.append(f"adapter rule {rule['name']['as']} reads {name}, which nobody exports")
    for r in renders:
        for hpa in r.of_kind("HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] not in exposed:
                    problems.append(
                        f"HPA {hpa['metadata']['name']} reads {metric['pods']['metric']['name']}, "
                        f"which no prometheus-adapter rule exposes ({sorted(exposed)})"
                    )
    return problems


def check_kserve(chart_values: dict[str, Any], config_names: set[str]) -> list[str]:
    documents = [d for d in yaml.safe_load_all(KSERVE.read_text()) if d]
    problems = validate_objects(documents)
    for obj in documents:
        model = obj.get("spec", {}).get("predictor", {}).get("model", {})
        if model.get("runtimeVersion") != chart_values["triton"]["image"]["tag"]:
            problems.append(
                f"KServe runtimeVersion {model.get('runtimeVersion')} != the chart's Triton {chart_values['triton']['image']['tag']}"
            )
        flags = _flags(model.get("args", []))
        if "model-config-name" in flags and flags["model-config-name"] not in config_names:
            problems.append(f"KServe --model-config-name={flags['model-config-name']} is not exported")
    return problems


# --- all of it ------------------------------------------------------------------------------------------
@dataclass
class Report:
    renders: list[Rendered] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def kinds(self) -> dict[str, dict[str, int]]:
        return {r.scenario: dict(sorted(r.kinds().items())) for r in self.renders}


def check_rendered(r: Rendered, routes: set[str], config_names: set[str]) -> list[str]:
    return (
        validate_objects(r.objects)
        + check_gateway(r, routes)
        + check_triton(r, config_names)
        + check_selection(r)
        + check_export_job(r)
    )


def run(
    repository: Path | None = None, scenarios: dict[str, tuple[str, dict[str, Any]]] | None = None
) -> Report:
    report = Report()
    routes = gateway_routes()
    config_names = exporter_config_names(repository)
    if "cpu-onnxruntime" not in config_names:
        report.problems.append(
            f"the exporter writes no configs/cpu-onnxruntime.pbtxt (it writes {sorted(config_names)})"
        )
    for name, (values_file, overrides) in (scenarios or SCENARIOS).items():
        values = scenario_values(values_file, overrides)
        problems = lint(values)
        try:
            rendered = render(values, name)
        except Exception as exc:  # HelmRenderError and friends: the message says which template and why
            report.problems.append(f"[{name}] render failed: {exc}")
            continue
        report.renders.append(rendered)
        problems += check_rendered(rendered, routes, config_names)
        report.problems += [f"[{name}] {p}" for p in problems]
    report.problems += check_autoscaling_metrics(report.renders)
    report.problems += [
        f"[kserve] {p}" for p in check_kserve(scenario_values("values.yaml", {}), config_names)
    ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository",
        type=Path,
        help="an exported model repository to take Triton config names from (default: model_repository/ "
        "when exported, else the exporter's source)",
    )
    args = parser.parse_args(argv)
    repository = args.repository
    if repository is None and (ROOT / "model_repository" / "reranker" / "config.pbtxt").is_file():
        repository = ROOT / "model_repository"
    report = run(repository)
    for scenario, kinds in report.kinds().items():
        print(f"{scenario}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    if report.problems:
        print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"\nchart OK: linted, rendered, schema-validated (Kubernetes {' and '.join(KUBE_VERSIONS)}) and wired"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
