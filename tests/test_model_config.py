"""Model YAML files at any location: relative weight locations written in a file resolve against its
directory (local and S3), overrides stay as given, and an exported model works from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from label_corpus import engine_masks_of, label_cli, local_corpus, manifest_rows, read_masks, write_manifest
from perturb import perturb_trainable

from actors.config import ConfigError
from actors.model.checkpoints import build_model, export_model, exported_config, load_exported
from actors.model.config import ModelConfig, read_model_config
from actors.model.segmllm import SegModel
from pipelines.label_config import load_label_config
from pipelines.train_config import load_model_config, load_train_config

ROOT = Path(__file__).resolve().parents[1]
LABEL_CONFIG = str(ROOT / "configs" / "label" / "tiny.yaml")
TINY_YAML = str(ROOT / "configs" / "model" / "tiny.yaml")

MODEL_YAML = """\
mllm:
  backbone: weights/backbone
  adapter_uri: adapter
  heads_uri: /abs/heads.safetensors
  sa2va_uri: file:///abs/sa2va
sam2:
  checkpoint: sam2.safetensors
sam2_decoder_uri: s3://elsewhere/decoder.safetensors
"""
RELATIVE = {"weights/backbone/config.json": b"{}", "adapter/adapter_config.json": b"{}", "sam2.safetensors": b"x"}


def _locations(config: ModelConfig) -> dict[str, str | None]:
    mllm = config.mllm
    return {"backbone": mllm.backbone, "adapter": mllm.adapter_uri, "heads": mllm.heads_uri, "sa2va": mllm.sa2va_uri,
            "sam2": config.sam2.checkpoint, "decoder": config.sam2_decoder_uri}


def _expected(directory: str) -> dict[str, str]:
    return {"backbone": f"{directory}/weights/backbone", "adapter": f"{directory}/adapter",
            "heads": "/abs/heads.safetensors", "sa2va": "file:///abs/sa2va", "sam2": f"{directory}/sam2.safetensors",
            "decoder": "s3://elsewhere/decoder.safetensors"}


def _write_local(directory: Path, text: str = MODEL_YAML) -> None:
    for name, data in {"model.yaml": text.encode(), **RELATIVE}.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def test_relative_locations_in_a_local_file_resolve_against_its_directory(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _write_local(tmp_path / "models" / "m")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    directory = str(tmp_path / "models" / "m")
    for uri in ("../models/m/model.yaml", f"{directory}/model.yaml", f"file://{directory}/model.yaml"):
        expected = _expected(f"file://{directory}" if uri.startswith("file://") else directory)
        assert _locations(read_model_config(uri)) == expected, uri

    overridden = read_model_config("../models/m/model.yaml", ["mllm.adapter_uri=mine/adapter",
                                                              "sam2.checkpoint=s3://b/sam2.pt"])
    assert _locations(overridden) == {**_expected(directory), "adapter": "mine/adapter", "sam2": "s3://b/sam2.pt"}

    (tmp_path / "models" / "tiny.yaml").write_text("mllm:\n  backbone: tiny\n  heads_uri: m/sam2.safetensors\n")
    tiny = read_model_config("../models/tiny.yaml")
    assert (tiny.mllm.backbone, tiny.mllm.heads_uri) == ("tiny", f"{tmp_path}/models/m/sam2.safetensors")


def test_relative_locations_in_an_s3_file_resolve_against_its_prefix(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    fs = s3.filesystem()
    for name, data in {"model.yaml": MODEL_YAML.encode(), **RELATIVE}.items():
        fs.pipe(f"{s3.bucket}/models/m/{name}", data)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint must come from the storage options given
    config = read_model_config(s3.uri("models/m/model.yaml"), ["mllm.heads_uri=rel/heads"], s3.storage_options)
    assert _locations(config) == {**_expected(s3.uri("models/m")), "heads": "rel/heads"}
    assert config.mllm.storage_options == s3.storage_options  # the weights are read the same way


def test_a_shipped_model_config_loads_by_its_project_path_from_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert read_model_config("configs/model/tiny.yaml") == read_model_config(TINY_YAML)
    with pytest.raises(ConfigError, match=rf"configs/model/none.yaml \(looked in {tmp_path} and in {ROOT}\)"):
        read_model_config("configs/model/none.yaml")


def test_missing_files_and_locations_are_config_errors_naming_them(s3, tmp_path: Path) -> None:  # noqa: ANN001
    for uri in (str(tmp_path / "none" / "model.yaml"), s3.uri("none/model.yaml"), "s3://no-such-bucket-vrseg/m.yaml"):
        with pytest.raises(ConfigError, match=f"config file not found: {uri}"):
            read_model_config(uri, storage_options=s3.storage_options)
    _write_local(tmp_path)
    (tmp_path / "sam2.safetensors").unlink()
    with pytest.raises(ConfigError, match=rf"{tmp_path}/model.yaml: sam2.checkpoint: 'sam2.safetensors' .* is "
                                          rf"{tmp_path}/sam2.safetensors, which does not exist"):
        read_model_config(str(tmp_path / "model.yaml"))
    assert read_model_config(str(tmp_path / "model.yaml"), ["sam2.checkpoint=x.pt"]).sam2.checkpoint == "x.pt"
    (tmp_path / "model.yaml").write_text(MODEL_YAML + "losses:\n  findd: 1.0\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path}/model.yaml: unknown key 'losses.findd'"):
        read_model_config(str(tmp_path / "model.yaml"))
    with pytest.raises(ConfigError, match=r"model_config .*config file not found: s3://vrseg-test/none/model.yaml"):
        load_model_config(load_train_config(ROOT / "configs" / "train" / "tiny.yaml",
                                            [f"model_config={s3.uri('none/model.yaml')}"]))
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path}/none.yaml"):
        load_label_config(LABEL_CONFIG, [f"model.config={tmp_path}/none.yaml"])


# ---------------------------------------------------------------------------------------- exported models
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegModel, ModelConfig, Path]:
    """A tiny model whose trainable parameters moved away from their initial values, exported locally."""
    config = read_model_config(TINY_YAML)
    model = build_model(config)
    model.enable_training()
    perturb_trainable(model, 0)
    directory = tmp_path_factory.mktemp("export") / "model"
    export_model(model, config, str(directory))
    return model, config, directory


def _first_video() -> tuple[str, Path, list[dict[str, str]]]:
    row = manifest_rows()[0]
    return row["video_id"], local_corpus() / "videos" / Path(row["video_uri"]).name, row["expressions"]


@pytest.fixture(scope="module")
def exported_masks(exported: tuple[SegModel, ModelConfig, Path]) -> dict[tuple[str, str], list[str]]:
    """The first corpus video labeled in this process by ``load_exported`` of the local export."""
    return engine_masks_of([_first_video()], load_exported(str(exported[2])))


def test_the_exported_weights_change_the_masks(exported_masks) -> None:  # noqa: ANN001
    """So equal masks below mean the exported weights were loaded, not the tiny model's."""
    assert exported_masks != engine_masks_of([_first_video()])


def test_a_training_config_starts_from_an_exported_model_yaml_on_s3(exported, s3) -> None:  # noqa: ANN001
    model, config, _ = exported
    uri = s3.uri("runs/stage1/model")
    export_model(model, config, uri, s3.storage_options)
    train = load_train_config(ROOT / "configs" / "train" / "tiny.yaml",
                              [f"model_config={uri}/model.yaml", "model_overrides=[losses.find=2.0]"])
    train.storage_options = dict(s3.storage_options)
    start = load_model_config(train)
    assert (start.mllm.adapter_uri, start.sam2.checkpoint) == (f"{uri}/adapter", f"{uri}/sam2.safetensors")
    assert start.losses.find == 2.0
    assert start == exported_config(uri, s3.storage_options, ["losses.find=2.0"])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_vrseg_label_loads_an_exported_model_yaml_from_another_working_directory(
        where: str, exported, exported_masks, s3, ray_local, tmp_path: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The model.yaml is named by a path relative to the working directory (local) or an s3:// URI; either way
    the masks are those of ``load_exported``, so the exported weights were loaded."""
    model, config, directory = exported
    row = manifest_rows()[0]
    name = Path(row["video_uri"]).name
    s3.filesystem().put_file(str(local_corpus() / "videos" / name), s3.uri("videos", name).removeprefix("s3://"))
    manifest = write_manifest(s3, [{**row, "video_uri": s3.uri("videos", name)}])
    monkeypatch.chdir(tmp_path)
    if where == "s3":
        export_model(model, config, s3.uri("runs/tiny/model"), s3.storage_options)
        model_yaml = s3.uri("runs/tiny/model/model.yaml")
    else:
        model_yaml = os.path.relpath(directory / "model.yaml")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from the label config's storage_options
    output = s3.uri("out")
    assert label_cli(["--manifest", manifest, "--output", output, "--config", LABEL_CONFIG, "--no-progress",
                      f"model.config={model_yaml}",
                      f"storage_options.client_kwargs.endpoint_url={s3.endpoint_url}"]) == 0
    masks = {key: [counts for _, counts in frames] for key, frames in read_masks(s3, output).items()}
    assert masks == exported_masks
