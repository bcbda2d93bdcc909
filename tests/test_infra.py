"""infra/: the templates render with infra/render.sh, parse, and agree with each other, with the code and
with the pins: the RayJob runs a `vrseg label` command line that the real parser accepts with a label
config (and model weights overrides) that load and validate, the pools fit the cluster's GPU nodes, the
launcher YAML satisfies Ray's own schema, the Dockerfile installs the pinned versions, nothing holds a
credential, and every template variable is documented in infra/README.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
TEMPLATES = {
    "raycluster": INFRA / "kuberay" / "raycluster.yaml",
    "rayjob": INFRA / "kuberay" / "rayjob.yaml",
    "launcher": INFRA / "aws" / "ray-cluster.yaml",
}
PLACEHOLDER = re.compile(r"\$\{(VRSEG_[A-Z0-9_]+)\}")

# The two setups infra/README.md documents: (label config, VRSEG_MODEL_OVERRIDES).
MODELS = {
    "qwen2_5vl-3b_sam2.1-l": (
        "configs/label/qwen2_5vl-3b_sam2.1-l.yaml",
        "[mllm.backbone=s3://corpus-bucket/models/Qwen2.5-VL-3B-Instruct,"
        "sam2.checkpoint=s3://corpus-bucket/models/sam2.1_hiera_large.pt]",
    ),
    "sa2va-qwen2_5vl-3b": (
        "configs/label/sa2va-qwen2_5vl-3b.yaml",
        "[mllm.backbone=s3://corpus-bucket/models/Qwen2.5-VL-3B-Instruct,"
        "mllm.sa2va_uri=s3://corpus-bucket/models/Sa2VA-Qwen2_5-VL-3B]",
    ),
}
VALUES = {
    "VRSEG_IMAGE": "123456789012.dkr.ecr.us-west-2.amazonaws.com/vrseg:0.1.0-cu128",
    "VRSEG_AWS_REGION": "us-west-2",
    "VRSEG_CPU_WORKERS": "4",
    "VRSEG_GPU_WORKERS": "8",
    "VRSEG_SERVICE_ACCOUNT": "vrseg-label",
    "VRSEG_JOB_NAME": "corpus-1",
    "VRSEG_MANIFEST_URI": "s3://corpus-bucket/corpus/manifest.jsonl",
    "VRSEG_OUTPUT_URI": "s3://corpus-bucket/labels/corpus-1",
    "VRSEG_LABEL_CONFIG": MODELS["qwen2_5vl-3b_sam2.1-l"][0],
    "VRSEG_MODEL_OVERRIDES": MODELS["qwen2_5vl-3b_sam2.1-l"][1],
    "VRSEG_EXTRA_OVERRIDES": "pools.mllm.size=4 pools.propagate.size=4",
    "VRSEG_AMI_ID": "ami-0123456789abcdef0",
    "VRSEG_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/vrseg-head",
    "VRSEG_WORKER_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/vrseg-worker",
}


def render(name: str, values: dict[str, str] = VALUES) -> dict[str, Any]:
    """The template rendered by infra/render.sh itself, parsed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRSEG_")} | values
    done = subprocess.run([str(INFRA / "render.sh"), str(TEMPLATES[name])], env=env, capture_output=True,
                          text=True, check=True)
    assert "${VRSEG_" not in done.stdout
    return yaml.safe_load(done.stdout)


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)$", d).groups() for d in project["project"]["dependencies"])


def test_templates_parse_and_use_only_documented_variables() -> None:
    documented = set(re.findall(r"^\| `(VRSEG_[A-Z0-9_]+)` \|", (INFRA / "README.md").read_text(), flags=re.M))
    used: set[str] = set()
    for path in TEMPLATES.values():
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
        used |= set(PLACEHOLDER.findall(path.read_text()))
    used |= set(PLACEHOLDER.findall((INFRA / "Dockerfile").read_text()))
    assert used == documented == set(VALUES)


def test_render_refuses_a_missing_variable() -> None:
    values = {k: v for k, v in VALUES.items() if k != "VRSEG_IMAGE"}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render("raycluster", values)
    assert failed.value.returncode == 2 and "VRSEG_IMAGE" in failed.value.stderr
    assert render("rayjob", VALUES | {"VRSEG_EXTRA_OVERRIDES": ""})["kind"] == "RayJob"  # empty is allowed


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def test_raycluster_has_a_driver_head_a_cpu_group_and_a_gpu_group() -> None:
    cluster = render("raycluster")
    spec = cluster["spec"]
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert spec["rayVersion"] == ray.__version__ == pins()["ray"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["gpu"]["maxReplicas"] == 8 and groups["cpu"]["maxReplicas"] == 4
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == VALUES["VRSEG_SERVICE_ACCOUNT"]
        for container in _containers(pod):
            assert container["image"] == VALUES["VRSEG_IMAGE"]
            assert container["resources"]["requests"] == container["resources"]["limits"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["AWS_DEFAULT_REGION"] == "us-west-2" and env["HF_HUB_OFFLINE"] == "1"
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
            assert container["envFrom"] == [{"secretRef": {"name": "vrseg-s3-credentials", "optional": True}}]
            mounted = {m["name"] for m in container["volumeMounts"]}
            assert mounted <= {v["name"] for v in pod["spec"]["volumes"]}
    gpu_limits = _containers(groups["gpu"]["template"])[0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in _containers(groups["cpu"]["template"])[0]["resources"]["limits"]


def _label_parser() -> argparse.ArgumentParser:
    from pipelines.label import register

    parser = argparse.ArgumentParser(prog="vrseg")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("model", sorted(MODELS))
def test_rayjob_runs_vrseg_label_with_a_valid_config_that_fits_the_gpu_nodes(model: str) -> None:
    from pipelines.label_config import load_label_config

    label_config, model_overrides = MODELS[model]
    values = VALUES | {"VRSEG_LABEL_CONFIG": label_config, "VRSEG_MODEL_OVERRIDES": model_overrides}
    job, cluster = render("rayjob", values), render("raycluster", values)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["shutdownAfterJobFinishes"] is False  # KubeRay requires it with clusterSelector
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["vrseg", "label"]
    args = _label_parser().parse_args(argv[1:])
    assert (args.manifest, args.output, args.config) == (
        VALUES["VRSEG_MANIFEST_URI"], VALUES["VRSEG_OUTPUT_URI"], label_config
    )
    assert (ROOT / args.config).is_file(), f"{args.config} is not in configs/label/"

    config, model_config = load_label_config(ROOT / args.config, args.overrides)
    assert model_config.mllm.backbone.startswith("s3://corpus-bucket/models/")
    pools = config.pools
    assert pools.mllm.size == pools.propagate.size == 4  # the extra overrides reached the config
    assert pools.mllm.num_gpus > 0 and pools.propagate.num_gpus > 0
    assert pools.decode.num_gpus == pools.write.num_gpus == 0
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = _containers(groups["gpu"]["template"])[0]["resources"]["limits"]
    cpu = _containers(groups["cpu"]["template"])[0]["resources"]["limits"]
    gpus_per_node, cpus_per_gpu_node = int(gpu["nvidia.com/gpu"]), float(gpu["cpu"])
    for pool in (pools.mllm, pools.propagate):  # every GPU actor fits a GPU node
        assert pool.num_gpus <= gpus_per_node and pool.num_cpus <= cpus_per_gpu_node
    for pool in (pools.decode, pools.write):
        assert pool.num_cpus <= float(cpu["cpu"])
    needed = pools.mllm.size * pools.mllm.num_gpus + pools.propagate.size * pools.propagate.num_gpus
    assert needed <= gpus_per_node * groups["gpu"]["maxReplicas"]  # the autoscaler can host both pools
    # README's shared-GPU variant: one actor of each stage on every GPU node
    assert 0.5 + 0.5 <= gpus_per_node and pools.mllm.num_cpus + pools.propagate.num_cpus <= cpus_per_gpu_node


def test_launcher_yaml_satisfies_rays_schema() -> None:
    config = render("launcher")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"] == {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False}
    assert config["docker"]["image"] == VALUES["VRSEG_IMAGE"]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu"]["resources"]["GPU"] >= 1 and "GPU" not in types["cpu"]["resources"]
    assert (types["cpu"]["max_workers"], types["gpu"]["max_workers"]) == (4, 8)
    assert config["max_workers"] >= types["cpu"]["max_workers"] + types["gpu"]["max_workers"]
    for node_type in types.values():
        assert node_type["node_config"]["ImageId"] == VALUES["VRSEG_AMI_ID"]
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert "$RAY_HEAD_IP:6379" in config["worker_start_ray_commands"][-1]  # shell variables survive rendering


def test_dockerfile_builds_the_pinned_stack_with_cuda_sam2() -> None:
    text = (INFRA / "Dockerfile").read_text()
    pinned = pins()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert base.startswith(f"pytorch/pytorch:{pinned['torch']}-cuda") and base.endswith("-devel")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    assert f"t == '{pinned['torch']}'" in text and "v == (3, 11)" in text
    assert "SAM2_BUILD_CUDA=1" in text and "SAM2_BUILD_ALLOW_ERRORS=0" in text
    assert f'"sam2=={pinned["sam2"]}"' in text and f'"ray[default]=={pinned["ray"]}"' in text
    for copied in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which does not exist"


def test_no_credentials_in_infra() -> None:
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}", text), path


def test_every_config_the_readme_names_exists() -> None:
    named = set(re.findall(r"configs/(?:label|model)/[\w.+-]+\.yaml", (INFRA / "README.md").read_text()))
    assert {label for label, _ in MODELS.values()} <= named
    assert [path for path in sorted(named) if not (ROOT / path).is_file()] == []
