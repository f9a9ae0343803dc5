"""deploy/k8s/: every manifest validates against the Kubernetes schemas (offline), and the
service's Deployment agrees with serve/settings.py on probes, ports and variable names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.settings import Settings, variable_name

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
# Variables the Deployment sets that are not the service's settings (the read-only root
# filesystem sends temporary files and HOME to the /tmp volume).
NOT_SETTINGS = {"TMPDIR", "HOME"}
SERVICE_ROUTES = {"/ready", "/health", "/metrics"}


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> dict[str, dict]:
    """Every resource the kustomization lists: file name -> the parsed document."""
    found = {}
    for name in kustomization()["resources"]:
        (document,) = list(yaml.safe_load_all((K8S / name).read_text()))
        found[name] = document
    return found


def resource(kind: str, name: str) -> dict:
    (match,) = [
        doc
        for doc in manifests().values()
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return match


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def setting_names() -> set[str]:
    return {variable_name(field) for field in Settings.model_fields}


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("name", sorted(kustomization()["resources"]))
def test_manifest_validates_against_the_kubernetes_schema(name: str) -> None:
    import kubernetes_validate

    document = manifests()[name]
    # strict: a misspelt or misplaced field is an error, not silently dropped.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validation_catches_a_wrong_field() -> None:
    """The check above can fail: a field in the wrong place is refused."""
    import kubernetes_validate

    deployment = resource("Deployment", "serve")
    container(deployment)["readinessProbe"]["path"] = "/ready"  # belongs under httpGet
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def service_environment() -> dict[str, str]:
    """What the service container's environment holds: ConfigMap, Secret, then env."""
    spec = container(resource("Deployment", "serve"))
    environment: dict[str, str] = {}
    for source in spec["envFrom"]:
        if "configMapRef" in source:
            environment.update(resource("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            environment.update(resource("Secret", source["secretRef"]["name"])["stringData"])
    environment.update({entry["name"]: entry["value"] for entry in spec.get("env", [])})
    return environment


def test_every_service_variable_is_a_setting_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = service_environment()
    unknown = set(environment) - setting_names() - NOT_SETTINGS
    assert not unknown, f"not read by serve.settings.Settings: {sorted(unknown)}"
    for name in list(setting_names()):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # the manifest's values are valid settings
    assert settings.host == "0.0.0.0", "a pod must bind every interface to be reached"
    assert settings.admin_token is None, "the shipped token is empty: admin stays off"
    assert str(settings.cache_dir) in {
        mount["mountPath"] for mount in container(resource("Deployment", "serve"))["volumeMounts"]
    }, "SERVE_CACHE_DIR is a mounted, writable volume"


def test_the_admin_token_comes_from_a_secret() -> None:
    secret_key = variable_name("admin_token")
    assert secret_key in resource("Secret", "serve-admin")["stringData"]
    assert secret_key not in resource("ConfigMap", "serve-settings")["data"]


def test_probes_and_ports_match_the_service() -> None:
    environment = service_environment()
    port = int(environment[variable_name("port")])
    deployment = resource("Deployment", "serve")
    spec = container(deployment)
    ports = {entry["name"]: entry["containerPort"] for entry in spec["ports"]}
    assert ports == {"http": port}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    service = resource("Service", "serve")
    assert [entry["targetPort"] for entry in service["spec"]["ports"]] == ["http"]


def test_probed_paths_are_routes_of_the_app() -> None:
    from serve.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])  # routers included, as served
    assert paths >= SERVICE_ROUTES


def test_the_pod_runs_locked_down() -> None:
    deployment = resource("Deployment", "serve")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    spec = container(deployment)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(spec["resources"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in spec["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]]


def test_the_autoscaler_and_budget_select_the_service() -> None:
    labels = resource("Deployment", "serve")["spec"]["template"]["metadata"]["labels"]
    hpa = resource("HorizontalPodAutoscaler", "serve")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve"}
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    budget = resource("PodDisruptionBudget", "serve")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert resource("Service", "serve")["spec"]["selector"].items() <= labels.items()
    assert budget["minAvailable"] < hpa["minReplicas"], "a drain can always proceed"


def test_the_mlflow_server_reads_its_store_from_a_secret() -> None:
    """The same names as `python -m stack start` and docker-compose.yml."""
    deployment = resource("Deployment", "mlflow")
    spec = container(deployment)
    (source,) = spec["envFrom"]
    secret = resource("Secret", source["secretRef"]["name"])["stringData"]
    assert secret["BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert secret["ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"} <= set(secret)
    arguments = spec["args"]
    expanded = {
        flag: value
        for flag, value in zip(arguments, arguments[1:], strict=False)
        if flag.startswith("--")
    }
    assert expanded["--backend-store-uri"] == "$(BACKEND_STORE_URI)"
    assert expanded["--artifacts-destination"] == "$(ARTIFACTS_DESTINATION)"
    port = int(expanded["--port"])
    assert [entry["containerPort"] for entry in spec["ports"]] == [port]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/health"
    service_port = resource("Service", "mlflow")["spec"]["ports"][0]["port"]
    tracking = resource("ConfigMap", "serve-settings")["data"]["MLFLOW_TRACKING_URI"]
    assert tracking == f"http://mlflow:{service_port}", "the service reaches the server by name"


@pytest.mark.parametrize(
    ("deployment", "dockerfile"),
    [("serve", "docker/serve/Dockerfile"), ("mlflow", "docker/mlflow/Dockerfile")],
)
def test_the_pod_user_is_the_images_user(deployment: str, dockerfile: str) -> None:
    """runAsUser is the uid the image creates (its files and HOME belong to it)."""
    import re

    (uid,) = re.findall(r"--uid (\d+)", (ROOT / dockerfile).read_text())
    pod = resource("Deployment", deployment)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
