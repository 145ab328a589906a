"""`make deploy-check` as a test: the chart renders with each values file, every object passes the Kubernetes
schemas, and the wiring matches the code. The checks are also shown to fail on the mistakes they guard against."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helm_python import HelmRenderError

from deploy import check


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return check.gateway_routes()


@pytest.fixture(scope="module")
def rendered() -> dict[str, check.Rendered]:
    return {
        name: check.render(check.scenario_values(values_file, overrides), name)
        for name, (values_file, overrides) in check.SCENARIOS.items()
    }


def test_the_chart_passes_the_deploy_check() -> None:
    report = check.run()
    assert report.problems == []
    kinds = report.kinds()
    assert kinds["gpu"] == {
        "Deployment": 2,
        "HorizontalPodAutoscaler": 2,
        "PersistentVolumeClaim": 1,
        "PodDisruptionBudget": 2,
        "Service": 2,
        "ServiceMonitor": 2,
    }
    assert kinds["cpu"] == {
        "Deployment": 1,
        "HorizontalPodAutoscaler": 1,
        "PersistentVolumeClaim": 1,
        "PodDisruptionBudget": 1,
        "Service": 1,
        "ServiceMonitor": 1,
    }
    assert kinds["gpu, export job, API keys"]["Job"] == 1
    assert kinds["gpu, export job, API keys"]["Secret"] == 1


def test_triton_config_names_come_from_a_real_export(tiny_model_repository: Path) -> None:
    names = check.exporter_config_names(tiny_model_repository)
    assert "cpu-onnxruntime" in names
    assert names == check.exporter_config_names(None), "the source scan and a real export agree"


def test_modes_select_the_right_triton_config(rendered: dict[str, check.Rendered]) -> None:
    def triton_args(scenario: str) -> list[str]:
        deployment = rendered[scenario].component("Deployment", "triton")
        assert deployment is not None
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    assert not any(a.startswith("--model-config-name") for a in triton_args("gpu"))
    assert "--model-config-name=cpu-onnxruntime" in triton_args("gpu, triton.mode=cpu")
    assert rendered["cpu"].component("Deployment", "triton") is None
    assert "--model-repository=s3://bucket/model_repository" in triton_args(
        "gpu, object store, existing key Secret"
    )


def _gateway(r: check.Rendered) -> dict:
    deployment = r.component("Deployment", "gateway")
    assert deployment is not None
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_a_probe_on_a_route_the_gateway_lacks_is_caught(rendered, routes) -> None:
    r = copy.deepcopy(rendered["gpu"])
    _gateway(r)["readinessProbe"]["httpGet"]["path"] = "/readyz"
    problems = check.check_gateway(r, routes)
    assert any("readinessProbe" in p and "/readyz" in p for p in problems), problems


def test_a_setting_the_gateway_does_not_have_is_caught(routes) -> None:
    values = check.scenario_values("values.yaml", {"gateway": {"settings": {"keep_top": 5, "keep": -1}}})
    problems = check.check_gateway(check.render(values), routes)
    assert any("RERANKER_KEEP_TOP is not a gateway setting" in p for p in problems), problems
    assert any(p.startswith("RERANKER_KEEP='-1'") for p in problems), problems


def test_whole_numbers_reach_the_gateway_without_an_exponent(routes) -> None:
    values = check.scenario_values("values.yaml", {"gateway": {"settings": {"max_body_bytes": 20_000_000}}})
    r = check.render(values)
    env = {e["name"]: e.get("value") for e in _gateway(r)["env"]}
    assert env["RERANKER_MAX_BODY_BYTES"] == "20000000"
    assert check.check_gateway(r, routes) == []


def test_the_models_file_is_mounted_and_validated_as_the_gateway_reads_it(rendered, routes) -> None:
    r = rendered["cpu, a models file"]
    gateway = _gateway(r)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["RERANKER_MODELS_FILE"] == "/etc/reranker/models.toml"
    assert any(m["mountPath"] == "/etc/reranker" and m["readOnly"] for m in gateway["volumeMounts"])
    assert "[models.qwen3]" in r.of_kind("ConfigMap")[0]["data"]["models.toml"]
    bad = check.scenario_values(
        "values-cpu.yaml", {"gateway": {"modelsFile": "[models.qwen3]\nweight = 0\n"}}
    )
    problems = check.check_gateway(check.render(bad), routes)
    assert any("model 'qwen3': weight: Input should be greater than 0" in p for p in problems), problems


def test_settings_the_chart_owns_are_refused() -> None:
    values = check.scenario_values("values.yaml", {"gateway": {"settings": {"triton_url": "elsewhere:8001"}}})
    with pytest.raises(HelmRenderError, match=r"gateway\.settings\.triton_url is set by the chart"):
        check.render(values)


def test_a_config_name_the_exporter_does_not_write_is_caught(rendered) -> None:
    r = copy.deepcopy(rendered["gpu, triton.mode=cpu"])
    deployment = r.component("Deployment", "triton")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--model-config-name=cpu-onnxruntime")] = "--model-config-name=cpu-ort"
    problems = check.check_triton(r, check.exporter_config_names(None))
    assert any("cpu-ort" in p for p in problems), problems


def test_triton_url_must_name_the_headless_service(rendered, routes) -> None:
    r = copy.deepcopy(rendered["gpu"])
    for item in _gateway(r)["env"]:
        if item["name"] == "RERANKER_TRITON_URL":
            item["value"] = "rr-reranker-triton.search.svc:8001"
    problems = check.check_gateway(r, routes)
    assert any("RERANKER_TRITON_URL" in p for p in problems), problems


def test_schema_and_selection_errors_are_caught(rendered) -> None:
    r = copy.deepcopy(rendered["gpu"])
    r.component("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ] = "8080"
    service = r.component("Service", "gateway")
    service["spec"]["selector"]["app.kubernetes.io/component"] = "gateways"
    monitor = r.component("ServiceMonitor", "triton")
    monitor["spec"]["endpoints"][0]["interval"] = "often"
    problems = check.validate_objects(r.objects) + check.check_selection(r)
    assert any("containerPort" in p and "not of type 'integer'" in p for p in problems), problems
    assert any(p.startswith("Service rr-reranker-gateway selects []") for p in problems), problems
    assert any("interval 'often'" in p for p in problems), problems


def test_every_hpa_metric_has_an_adapter_rule(rendered) -> None:
    r = copy.deepcopy(rendered["gpu"])
    hpa = next(h for h in r.of_kind("HorizontalPodAutoscaler") if "triton" in h["metadata"]["name"])
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "triton_queue_time"
    problems = check.check_autoscaling_metrics([r])
    assert any("triton_queue_time" in p for p in problems), problems


def test_an_external_triton_is_named_by_gateway_triton_url(rendered) -> None:
    r = rendered["cpu, external Triton (KServe)"]
    env = {e["name"]: e.get("value") for e in _gateway(r)["env"]}
    assert env["RERANKER_TRITON_URL"] == "reranker-triton-predictor.search.svc:9000"
    assert "RERANKER_TRITON_URL" not in {e["name"] for e in _gateway(rendered["cpu"])["env"]}
