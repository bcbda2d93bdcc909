"""infra/: the templates render with infra/render.sh (which refuses missing, empty and malformed values and
names KubeRay would reject), the rendered RayCluster and RayJobs validate strictly against KubeRay's CRDs
(v1.1.0 and v1.7.0, schemas in tests/data), the launcher YAML satisfies Ray's own schema and defaults
merging, and the manifests agree with the code and the pins: each RayJob runs a `vrseg` command line that
the real parser accepts with absolute config paths in the image that load and validate, stops itself at
its deadline, and fits the cluster; object stores fit their /dev/shm; scratch disk is requested; the
Dockerfile installs the pinned versions and what `ray up` needs; nothing holds a credential; every template
variable is documented in infra/README.md. Configs named relative to the project load from any directory.

tests/data/kuberay-<tag>-<plural>.schema.json.gz: the ``v1`` openAPIV3Schema of
ray-operator/config/crd/bases/ray.io_<plural>.yaml at that KubeRay tag, with ``description`` texts removed.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
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
from packaging.requirements import Requirement

from actors.config import ConfigError, load_config
from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
IMAGE_ROOT = Path("/opt/vrseg")  # the Dockerfile's WORKDIR: where configs/ ships in the image
TEMPLATES = {
    "raycluster": INFRA / "kuberay" / "raycluster.yaml",
    "label": INFRA / "kuberay" / "rayjob-label.yaml",
    "train": INFRA / "kuberay" / "rayjob-train.yaml",
    "evaluate": INFRA / "kuberay" / "rayjob-evaluate.yaml",
    "launcher": INFRA / "aws" / "ray-cluster.yaml",
}
RAYJOBS = ("label", "train", "evaluate")
PLACEHOLDER = re.compile(r"\$\{(VRSEG_[A-Z0-9_]+)\}")
KUBERAY_VERSIONS = ("v1.1.0", "v1.7.0")

# The two setups infra/README.md documents: (label config, VRSEG_MODEL_OVERRIDES).
MODELS = {
    "qwen2_5vl-3b_sam2.1-l": (
        "/opt/vrseg/configs/label/qwen2_5vl-3b_sam2.1-l.yaml",
        "[mllm.backbone=s3://corpus-bucket/models/Qwen2.5-VL-3B-Instruct,"
        "sam2.checkpoint=s3://corpus-bucket/models/sam2.1_hiera_large.pt]",
    ),
    "sa2va-qwen2_5vl-3b": (
        "/opt/vrseg/configs/label/sa2va-qwen2_5vl-3b.yaml",
        "[mllm.backbone=s3://corpus-bucket/models/Qwen2.5-VL-3B-Instruct,"
        "mllm.sa2va_uri=s3://corpus-bucket/models/Sa2VA-Qwen2_5-VL-3B]",
    ),
}
VALUES = {
    "VRSEG_IMAGE": "123456789012.dkr.ecr.us-west-2.amazonaws.com/vrseg:0.1.0-cu128",
    "VRSEG_AWS_REGION": "us-west-2",
    "VRSEG_CPU_WORKERS": "4",
    "VRSEG_GPU_WORKERS": "8",
    "VRSEG_SERVICE_ACCOUNT": "vrseg",
    "VRSEG_JOB_NAME": "corpus-1",
    "VRSEG_DEADLINE": "72h",
    "VRSEG_LABEL_INPUT": "--manifest s3://corpus-bucket/corpus/manifest.jsonl",
    "VRSEG_OUTPUT_URI": "s3://corpus-bucket/labels/corpus-1",
    "VRSEG_LABEL_CONFIG": MODELS["qwen2_5vl-3b_sam2.1-l"][0],
    "VRSEG_MODEL_OVERRIDES": MODELS["qwen2_5vl-3b_sam2.1-l"][1],
    "VRSEG_EXTRA_OVERRIDES": "pools.mllm.size=4 pools.propagate.size=4",
    "VRSEG_TRAIN_CONFIG": "/opt/vrseg/configs/train/joint_3b.yaml",
    "VRSEG_MODEL_CONFIG": "/opt/vrseg/configs/model/qwen2_5vl-3b_sam2.1-l.yaml",
    "VRSEG_STORAGE_PATH": "s3://corpus-bucket/runs",
    "VRSEG_EVAL_FORMAT": "mevis",
    "VRSEG_ANNOTATIONS_URI": "s3://corpus-bucket/mevis/valid_u",
    "VRSEG_REPORT_URI": "s3://corpus-bucket/reports/mevis-valid-u",
    "VRSEG_EVAL_CONFIG": "/opt/vrseg/configs/eval/default.yaml",
    "VRSEG_AMI_ID": "ami-0123456789abcdef0",
    "VRSEG_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/vrseg-head",
    "VRSEG_WORKER_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/vrseg-worker",
}
TRAIN_OVERRIDES = (
    "sources.mevis.uri=s3://corpus-bucket/mevis/train sources.revos.uri=s3://corpus-bucket/revos "
    "sources.refytvos.uri=s3://corpus-bucket/refytvos sources.charades.uri=s3://corpus-bucket/charades/sta.txt "
    "sources.charades.videos_uri=s3://corpus-bucket/charades/videos sources.activitynet.uri=s3://corpus-bucket/anet/train.json "
    "sources.activitynet.videos_uri=s3://corpus-bucket/anet/videos num_workers=8"
)
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


def render_text(name: str, values: dict[str, str] = VALUES) -> str:
    """The template rendered by infra/render.sh itself (``CalledProcessError`` when it refuses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRSEG_")} | values
    done = subprocess.run([str(INFRA / "render.sh"), str(TEMPLATES[name])], env=env, capture_output=True,
                          text=True, check=True)
    assert "${VRSEG_" not in done.stdout
    return done.stdout


def render(name: str, values: dict[str, str] = VALUES) -> dict[str, Any]:
    """The rendered template, parsed."""
    return yaml.safe_load(render_text(name, values))


def in_checkout(location: str) -> Path:
    """The file of this checkout that an absolute path in the image names."""
    path = Path(location)
    assert path.is_absolute() and path.is_relative_to(IMAGE_ROOT), f"{location} is not under {IMAGE_ROOT}"
    return ROOT / path.relative_to(IMAGE_ROOT)


def to_bytes(quantity: str) -> int:
    """A Kubernetes binary quantity (``17Gi``) or a byte count (``"4294967296"``) in bytes."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|)", str(quantity)).groups()
    return int(number) * QUANTITY[unit]


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)$", d).groups() for d in project["project"]["dependencies"])


def entrypoint(job: dict[str, Any]) -> list[str]:
    """The RayJob's command after its ``timeout`` prefix (asserted), as argv."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["timeout", "--kill-after=10m", VALUES["VRSEG_DEADLINE"]]
    return argv[3:]


def parse(job: dict[str, Any]) -> argparse.Namespace:
    """The RayJob's ``vrseg`` command line, parsed by vrseg's own parser."""
    argv = entrypoint(job)
    assert argv[0] == "vrseg"
    return build_parser().parse_args(argv[1:])


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _groups(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}


def _limits(group: dict[str, Any]) -> dict[str, Any]:
    return _containers(group["template"])[0]["resources"]["limits"]


# --------------------------------------------------------------------------------------------- rendering
def test_templates_parse_and_use_only_documented_variables() -> None:
    documented = set(re.findall(r"^\| `(VRSEG_[A-Z0-9_]+)` \|", (INFRA / "README.md").read_text(), flags=re.M))
    used: set[str] = set()
    for path in TEMPLATES.values():
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
        used |= set(PLACEHOLDER.findall(path.read_text()))
    assert not PLACEHOLDER.findall((INFRA / "Dockerfile").read_text())
    assert used == documented == set(VALUES)
    assert {path.name for path in (INFRA / "kuberay").iterdir()} == {
        TEMPLATES[name].name for name in ("raycluster", *RAYJOBS)
    }


REFUSALS = [
    ("raycluster", {"VRSEG_IMAGE": None}, "needs VRSEG_IMAGE (see infra/README.md)"),
    ("raycluster", {"VRSEG_CPU_WORKERS": ""}, "VRSEG_CPU_WORKERS is empty (see infra/README.md)"),
    ("launcher", {"VRSEG_GPU_WORKERS": "eight"}, "VRSEG_GPU_WORKERS must be a positive integer, got 'eight'"),
    ("raycluster", {"VRSEG_GPU_WORKERS": "0"}, "VRSEG_GPU_WORKERS must be a positive integer, got '0'"),
    ("label", {"VRSEG_MODEL_OVERRIDES": ""}, "VRSEG_MODEL_OVERRIDES is empty (see infra/README.md)"),
    ("label", {"VRSEG_LABEL_CONFIG": "configs/label/tiny.yaml"},
     "VRSEG_LABEL_CONFIG must be an absolute path (/opt/vrseg/configs/...) or a URI, "
     "got 'configs/label/tiny.yaml'"),
    ("train", {"VRSEG_DEADLINE": "3 days"}, "VRSEG_DEADLINE must be a duration such as 72h, got '3 days'"),
    ("evaluate", {"VRSEG_JOB_NAME": "Corpus_1"},
     "RayJob name 'vrseg-eval-Corpus_1' must be lower case letters, digits and '-', starting with a letter "
     "(check VRSEG_JOB_NAME)"),
    ("label", {"VRSEG_JOB_NAME": "x" * 36},
     f"RayJob name 'vrseg-label-{'x' * 36}' has 48 characters; KubeRay allows 47 (shorten VRSEG_JOB_NAME)"),
]


@pytest.mark.parametrize(("template", "change", "message"), REFUSALS)
def test_render_refuses_missing_empty_and_malformed_values(template: str, change: dict[str, str | None],
                                                           message: str) -> None:
    values = {k: v for k, v in (VALUES | change).items() if v is not None}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render_text(template, values)
    assert failed.value.returncode == 2 and failed.value.stdout == ""
    assert failed.value.stderr == f"render.sh: {TEMPLATES[template]}: {message}\n"


def test_render_accepts_empty_extra_overrides_and_the_longest_job_name() -> None:
    job = render("label", VALUES | {"VRSEG_EXTRA_OVERRIDES": "", "VRSEG_JOB_NAME": "x" * 35})
    assert job["metadata"]["name"] == "vrseg-label-" + "x" * 35 and len(job["metadata"]["name"]) == 47
    assert entrypoint(job)[-1].startswith("model.overrides=")


# ------------------------------------------------------------------------------------------ KubeRay CRDs
def _strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation (kubectl's default): an object
    with declared properties takes no other field unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            strict[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            strict[key] = _strict(value)
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


def crd_schema(version: str, plural: str) -> dict[str, Any]:
    with gzip.open(ROOT / "tests" / "data" / f"kuberay-{version}-{plural}.schema.json.gz", "rt") as file:
        return _strict(json.load(file))


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
@pytest.mark.parametrize("template", ["raycluster", *RAYJOBS])
def test_manifests_validate_against_kuberay_crds(version: str, template: str) -> None:
    manifest = render(template)
    plural = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}[manifest["kind"]]
    validator = jsonschema.Draft7Validator(crd_schema(version, plural))
    assert [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)] == []
    broken = manifest | {"spec": manifest["spec"] | {"unknownField": 1}}
    assert not validator.is_valid(broken)  # the strict schema does reject unknown fields


# ------------------------------------------------------------------------------------------- RayCluster
def test_raycluster_has_a_driver_head_a_cpu_group_and_a_gpu_group() -> None:
    cluster = render("raycluster")
    spec = cluster["spec"]
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"] == "vrseg"
    assert spec["rayVersion"] == ray.__version__ == pins()["ray"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = _groups(cluster)
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
    assert _limits(groups["gpu"])["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in _limits(groups["cpu"])


def _pods(cluster: dict[str, Any]) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Group name ("head", "cpu", "gpu") -> (rayStartParams, pod template)."""
    head = cluster["spec"]["headGroupSpec"]
    return {"head": (head["rayStartParams"], head["template"])} | {
        name: (group["rayStartParams"], group["template"]) for name, group in _groups(cluster).items()
    }


@pytest.mark.parametrize("group", ["head", "cpu", "gpu"])
def test_every_object_store_fits_its_shm_and_leaves_heap(group: str) -> None:
    params, pod = _pods(render("raycluster"))[group]
    container = _containers(pod)[0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    store, shm_size = int(params["object-store-memory"]), to_bytes(shm["sizeLimit"])
    memory = to_bytes(container["resources"]["limits"]["memory"])
    # Ray keeps the store in /dev/shm only when /dev/shm holds it (else it moves to /tmp and warns); tmpfs
    # pages count in the pod's memory limit, so what the shm does not take is the actors' heap.
    assert store + 2**30 == shm_size
    assert store <= 0.3 * memory  # not above Ray's own default share of the pod's memory
    assert memory - shm_size >= max(2 * store, 8 * 2**30)  # heap


@pytest.mark.parametrize("group", ["head", "cpu", "gpu"])
def test_scratch_disk_is_requested(group: str) -> None:
    params, pod = _pods(render("raycluster"))[group]
    container = _containers(pod)[0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    scratch = volumes[mounts["/tmp"]]["emptyDir"]  # tempfile's directory: frame stores, spools, copies
    assert "medium" not in scratch
    requested = to_bytes(container["resources"]["requests"]["ephemeral-storage"])
    assert requested == to_bytes(container["resources"]["limits"]["ephemeral-storage"])
    assert requested >= to_bytes(scratch["sizeLimit"]) + 10 * 2**30  # + container layer and logs
    assert to_bytes(scratch["sizeLimit"]) >= int(params["object-store-memory"])  # room to spill the store


def test_gpu_scratch_holds_two_frame_stores_weights_and_spills() -> None:
    from pipelines.label_config import load_label_config

    params, pod = _pods(render("raycluster"))["gpu"]
    scratch = to_bytes({v["name"]: v for v in pod["spec"]["volumes"]}["scratch"]["emptyDir"]["sizeLimit"])
    for label_config, model_overrides in MODELS.values():
        config, _ = load_label_config(in_checkout(label_config), [f"model.overrides={model_overrides}"])
        store = config.decoder_config().max_store_bytes
        weights = 2 * 10 * 2**30  # two actors on a shared GPU, about 9 GB of weights each
        assert scratch >= 2 * store + weights + int(params["object-store-memory"])


# ---------------------------------------------------------------------------------------------- RayJobs
@pytest.mark.parametrize("template", RAYJOBS)
def test_rayjobs_select_the_cluster_and_stop_themselves_at_their_deadline(template: str) -> None:
    job, cluster = render(template), render("raycluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    prefix = {"label": "vrseg-label-", "train": "vrseg-train-", "evaluate": "vrseg-eval-"}[template]
    assert job["metadata"]["name"] == prefix + VALUES["VRSEG_JOB_NAME"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["shutdownAfterJobFinishes"] is False  # KubeRay requires it with clusterSelector
    # with clusterSelector, activeDeadlineSeconds only marks the RayJob failed: `timeout` stops the job itself
    assert "activeDeadlineSeconds" not in job["spec"]
    assert entrypoint(job)[:2] == ["vrseg", template]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_label_rayjob_runs_vrseg_label_with_a_valid_config_that_fits_the_gpu_nodes(model: str) -> None:
    from pipelines.label_config import load_label_config

    label_config, model_overrides = MODELS[model]
    values = VALUES | {"VRSEG_LABEL_CONFIG": label_config, "VRSEG_MODEL_OVERRIDES": model_overrides}
    job, cluster = render("label", values), render("raycluster", values)
    args = parse(job)
    assert (args.command, args.manifest, args.output, args.config) == (
        "label", "s3://corpus-bucket/corpus/manifest.jsonl", VALUES["VRSEG_OUTPUT_URI"], label_config
    )
    config, model_config = load_label_config(in_checkout(args.config), args.overrides)
    assert model_config.mllm.backbone.startswith("s3://corpus-bucket/models/")
    pools = config.pools
    assert pools.mllm.size == pools.propagate.size == 4  # the extra overrides reached the config
    assert pools.mllm.num_gpus > 0 and pools.propagate.num_gpus > 0
    assert pools.decode.num_gpus == pools.write.num_gpus == 0
    groups = _groups(cluster)
    gpu, cpu = _limits(groups["gpu"]), _limits(groups["cpu"])
    gpus_per_node, cpus_per_gpu_node = int(gpu["nvidia.com/gpu"]), float(gpu["cpu"])
    for pool in (pools.mllm, pools.propagate):  # every GPU actor fits a GPU node
        assert pool.num_gpus <= gpus_per_node and pool.num_cpus <= cpus_per_gpu_node
    for pool in (pools.decode, pools.write):
        assert pool.num_cpus <= float(cpu["cpu"])
    needed = pools.mllm.size * pools.mllm.num_gpus + pools.propagate.size * pools.propagate.num_gpus
    assert needed <= gpus_per_node * groups["gpu"]["maxReplicas"]  # the autoscaler can host both pools
    # README's shared-GPU variant: one actor of each stage on every GPU node
    assert 0.5 + 0.5 <= gpus_per_node and pools.mllm.num_cpus + pools.propagate.num_cpus <= cpus_per_gpu_node


def test_label_rayjob_also_labels_a_benchmark() -> None:
    values = VALUES | {"VRSEG_LABEL_INPUT": "--from-dataset mevis --annotations s3://corpus-bucket/mevis/valid_u"}
    args = parse(render("label", values))
    assert (args.manifest, args.from_dataset) == (None, "mevis")
    assert args.annotations == "s3://corpus-bucket/mevis/valid_u"


def test_train_rayjob_checkpoints_to_object_storage_under_its_name_and_fits_the_gpu_nodes() -> None:
    from pipelines.train_config import load_model_config, load_train_config

    job = render("train", VALUES | {"VRSEG_EXTRA_OVERRIDES": TRAIN_OVERRIDES})
    cluster = render("raycluster")
    args = parse(job)
    assert (args.command, args.config) == ("train", VALUES["VRSEG_TRAIN_CONFIG"])
    model_config = f"model_config={VALUES['VRSEG_MODEL_CONFIG']}"
    assert model_config in args.overrides  # absolute, not the train config's relative one
    overrides = [f"model_config={in_checkout(VALUES['VRSEG_MODEL_CONFIG'])}" if o == model_config else o
                 for o in args.overrides]
    config = load_train_config(in_checkout(args.config), overrides)
    # re-submitting the same RayJob resumes: the run is <storage_path>/<name>, name = the job name
    assert (config.name, config.storage_path) == (VALUES["VRSEG_JOB_NAME"], VALUES["VRSEG_STORAGE_PATH"])
    assert config.model_config == str(in_checkout(VALUES["VRSEG_MODEL_CONFIG"]))
    assert load_model_config(config).mllm.backbone == "s3://corpus-bucket/models/Qwen2.5-VL-3B-Instruct"
    groups = _groups(cluster)
    gpu, cpu = _limits(groups["gpu"]), _limits(groups["cpu"])
    assert config.scaling.use_gpu
    assert config.num_workers <= int(gpu["nvidia.com/gpu"]) * groups["gpu"]["maxReplicas"]
    assert config.scaling.cpus_per_worker <= float(gpu["cpu"])
    decode_cpus = config.data.decode_actors * config.data.cpus_per_actor
    assert decode_cpus <= float(cpu["cpu"]) * groups["cpu"]["maxReplicas"]


def test_evaluate_rayjob_scores_the_labeling_output() -> None:
    from pipelines.evaluate import EvalConfig

    job = render("evaluate", VALUES | {"VRSEG_EXTRA_OVERRIDES": "ray.concurrency=8"})
    args = parse(job)
    assert (args.command, args.format, args.annotations) == ("evaluate", "mevis", VALUES["VRSEG_ANNOTATIONS_URI"])
    assert (args.predictions, args.out) == (VALUES["VRSEG_OUTPUT_URI"], VALUES["VRSEG_REPORT_URI"])
    assert load_config(EvalConfig, in_checkout(args.config), args.overrides).ray.concurrency == 8


# ----------------------------------------------------------------------------------- cluster launcher
def test_launcher_yaml_satisfies_rays_schema_and_installs_nothing() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = render("launcher")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(config)  # what `ray up` runs: Ray's AWS defaults merged in, then validated
    validate_config(prepared)
    assert config["provider"] == {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False}
    assert config["docker"]["image"] == VALUES["VRSEG_IMAGE"]
    # Ray's AWS defaults would `pip install boto3` (unpinned) on the head: every list is set, and empty
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert config[key] == prepared[key] == []
    commands = [*prepared["initialization_commands"], *prepared["head_start_ray_commands"],
                *prepared["worker_start_ray_commands"]]
    assert not [c for c in commands if "pip " in c]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu"]["resources"]["GPU"] >= 1 and "GPU" not in types["cpu"]["resources"]
    assert (types["cpu"]["max_workers"], types["gpu"]["max_workers"]) == (4, 8)
    assert config["max_workers"] >= types["cpu"]["max_workers"] + types["gpu"]["max_workers"]
    for node_type in types.values():
        assert node_type["node_config"]["ImageId"] == VALUES["VRSEG_AMI_ID"]
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert "$RAY_HEAD_IP:6379" in config["worker_start_ray_commands"][-1]  # shell variables survive rendering


def test_launcher_puts_the_container_tmp_on_the_scratch_disk() -> None:
    config = render("launcher")
    assert "--volume /mnt/vrseg-scratch:/tmp" in config["docker"]["run_options"]
    scratch = [c for c in config["initialization_commands"] if "/mnt/vrseg-scratch" in c]
    assert len(scratch) == 1 and "Instance Storage" in scratch[0] and "chmod 1777 /mnt/vrseg-scratch" in scratch[0]
    for command in config["initialization_commands"]:
        subprocess.run(["bash", "-n", "-c", command], check=True)  # valid shell, as ssh runs it on the host


# ----------------------------------------------------------------------------------------------- image
def test_dockerfile_builds_the_pinned_stack_with_cuda_sam2_and_what_ray_up_needs() -> None:
    text = (INFRA / "Dockerfile").read_text()
    pinned = pins()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert base.startswith(f"pytorch/pytorch:{pinned['torch']}-cuda") and base.endswith("-devel")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    assert f"t == '{pinned['torch']}'" in text and f"tv == '{pinned['torchvision']}'" in text
    assert "v == (3, 11)" in text
    # the base's own torch builds hold for every later pip install
    assert "PIP_CONSTRAINT=/etc/vrseg/constraints.txt" in text
    assert "print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" in text
    assert re.search(r'^ARG TORCH_CUDA_ARCH_LIST="[0-9.;]+\+PTX"$', text, flags=re.M)
    assert "SAM2_BUILD_CUDA=1" in text and "SAM2_BUILD_ALLOW_ERRORS=0" in text
    assert f'"sam2=={pinned["sam2"]}"' in text and f'"ray[default]=={pinned["ray"]}"' in text
    packages = re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", text).group(1).split()
    assert {"rsync", "openssh-client", "wget"} <= set(packages)
    # boto3 for the autoscaler: the versions this environment runs s3fs with, inside aiobotocore's range
    boto = dict(re.findall(r'"(boto3|botocore)==([^"]+)"', text))
    assert boto == {name: importlib.metadata.version(name) for name in ("boto3", "botocore")}
    botocore = next(Requirement(r) for r in importlib.metadata.requires("aiobotocore") if r.startswith("botocore"))
    assert botocore.specifier.contains(boto["botocore"])
    assert re.search(r"^WORKDIR (\S+)$", text, flags=re.M).group(1) == str(IMAGE_ROOT)
    assert "ENV HOME=/home/ray" in text and '--home-dir "$HOME" --uid 1000' in text
    for copied in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which does not exist"


def test_no_credentials_in_infra() -> None:
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}", text), path


def test_every_config_the_readme_names_exists() -> None:
    text = (INFRA / "README.md").read_text()
    named = set(re.findall(r"(?:/opt/vrseg/)?configs/(?:label|model|train|eval)/[\w.+-]+\.yaml", text))
    assert {label for label, _ in MODELS.values()} <= named
    assert {VALUES[k] for k in ("VRSEG_TRAIN_CONFIG", "VRSEG_MODEL_CONFIG", "VRSEG_EVAL_CONFIG")} <= named
    paths = [in_checkout(p) if p.startswith("/") else ROOT / p for p in sorted(named)]
    assert [path for path in paths if not path.is_file()] == []


# ------------------------------------------------------------------------------------ config locations
def test_shipped_configs_load_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.evaluate import EvalConfig
    from pipelines.label_config import load_label_config

    monkeypatch.chdir(tmp_path)
    assert load_label_config("configs/label/tiny.yaml")[0].model.config == "configs/model/tiny.yaml"
    assert load_config(EvalConfig, "configs/eval/default.yaml").ray.concurrency == 2
    (tmp_path / "configs" / "eval").mkdir(parents=True)  # a file under the working directory comes first
    (tmp_path / "configs" / "eval" / "default.yaml").write_text("ray:\n  concurrency: 5\n")
    assert load_config(EvalConfig, "configs/eval/default.yaml").ray.concurrency == 5
    with pytest.raises(ConfigError) as missing:
        load_config(EvalConfig, "configs/eval/none.yaml")
    assert str(missing.value) == (
        f"config file not found: configs/eval/none.yaml (looked in {tmp_path} and in {ROOT})"
    )
