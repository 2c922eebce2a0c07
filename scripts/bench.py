"""Gallery build throughput and identify latency of maskid against the plain facenet-pytorch loop.

The reference is the loop most FaceNet projects run (:class:`core.evaluation.reference.ReferencePipeline`):
decode a photo, run facenet-pytorch's MTCNN on it, embed the largest face with
InceptionResnetV1 at batch size 1. It uses maskid's converted CASIA-WebFace weights.
Reference and maskid run interleaved on the same photos in one process, chunk by chunk,
so that other work on the machine slows both alike. Compare the ratios, because the
absolute times depend on the load.

Sections:

1. Gallery build: the same LFW photos through the reference loop and through
   ``maskid gallery build`` (:func:`core.gallery_build.build_gallery` into a temporary
   SQLite gallery), for several maskid configurations.
2. Identify: one 1280x960 photo with one face against a gallery of 10,000 people with
   random unit templates (one original and two synthetic-mask templates each).
3. Detection on a downscaled copy: faces found in the large ``smoke`` photos at full
   resolution and on a copy at most ``detection_max_side`` pixels long.
4. LFW dev-pairs accuracy of the embedding precisions, on one detection pass.
5. Search at scale: ``scripts/bench_search.py`` with its defaults (galleries of 1e4, 1e5
   and 1e6 synthetic templates), unless ``--skip-search``.

The tables go into docs/benchmarks.md between the ``bench-throughput`` markers, and the
plot into docs/img/bench_throughput.png. The search benchmark writes its own section.

Usage::

    MASKID_TORCH_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/bench.py --datasets ../shared/datasets
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.alignment import align_face
from core.embedding import cpu_has_native_bf16
from core.evaluation.lfw import k_fold_accuracy, pair_scores, read_pairs, split_folds
from core.evaluation.reference import ReferencePipeline
from core.gallery_build import DatasetImage, build_gallery, scan_dataset
from core.images import DecodedImage, load_image
from core.pipeline import FacePipeline, main_face
from core.service import FaceService
from core.settings import Settings

logger = logging.getLogger("bench")

START_MARKER = "<!-- bench-throughput:start -->"
END_MARKER = "<!-- bench-throughput:end -->"
CHUNK = 16  # photos per interleaved chunk, the gallery build's own batch size
IDENTIFY_PHOTO = Path("smoke/deepface_tests_dataset/img2.jpg")  # 1536x1152, one face
IDENTIFY_SIZE = (1280, 960)
GALLERY_PEOPLE = 10_000

# Gallery build configurations: a label and the settings changed from the defaults.
BUILD_CONFIGS: tuple[tuple[str, dict[str, object]], ...] = (
    ("maskid default", {}),
    ("maskid, synthetic-mask templates flipped too", {"synthetic_mask_flip": True}),
    (
        "maskid, fp32 embedding, synthetic-mask templates flipped (earlier default)",
        {"embedding_precision": "fp32", "synthetic_mask_flip": True},
    ),
    ("maskid, no synthetic masks", {"synthetic_masks": 0}),
    ("maskid, no synthetic masks, no flip", {"synthetic_masks": 0, "flip": False}),
)
IDENTIFY_CONFIGS: tuple[tuple[str, dict[str, object]], ...] = (
    ("maskid default", {}),
    ("maskid, detection at full resolution", {"detection_max_side": 0}),
    ("maskid, fp32 embedding", {"embedding_precision": "fp32"}),
)


@dataclasses.dataclass
class BuildRow:
    label: str
    photos: int
    reference_s: float
    maskid_s: float

    @property
    def reference_rate(self) -> float:
        return self.photos / self.reference_s

    @property
    def maskid_rate(self) -> float:
        return self.photos / self.maskid_s


@dataclasses.dataclass
class IdentifyRow:
    label: str
    reference_ms: list[float]
    maskid_ms: list[float]


@dataclasses.dataclass
class Results:
    """Every section's measurements, as rows or as Markdown table lines."""

    build_rows: list[BuildRow]
    stages: dict[str, tuple[str, float, str]]
    identify_rows: list[IdentifyRow]
    detection_lines: list[str]
    accuracy_lines: list[str]
    masked_lines: list[str]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="datasets folder")
    parser.add_argument("--photos", type=int, default=128, help="LFW photos per gallery build configuration")
    parser.add_argument("--repeats", type=int, default=15, help="identify runs per pipeline and configuration")
    parser.add_argument("--lfw-pairs", type=int, default=None, help="score only the first N dev pairs (default all)")
    parser.add_argument("--skip-accuracy", action="store_true", help="leave out the LFW accuracy section")
    parser.add_argument(
        "--skip-masked-ident", action="store_true", help="leave out the two masked identification runs (about 15 min)"
    )
    parser.add_argument(
        "--skip-search", action="store_true", help="leave out the search-at-scale benchmark (about 12 min, 2.3 GB)"
    )
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"), help="Markdown file to update")
    parser.add_argument("--no-doc", action="store_true", help="print the tables without writing the doc or plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("core").setLevel(logging.WARNING)

    base = Settings.from_env(env_file=None)
    if base.torch_threads:
        torch.set_num_threads(base.torch_threads)

    with tempfile.TemporaryDirectory(prefix="maskid-bench-") as work:
        work_dir = Path(work)
        base = base.replace(db_path=work_dir / "unused.sqlite3")
        build_rows = bench_gallery_build(base, args.datasets, args.photos, work_dir)
        stages = bench_stages(base, args.datasets)
        identify_rows = bench_identify(base, args.datasets, args.repeats)
        detection_lines = bench_detection_downscale(base, args.datasets)
        accuracy_lines = [] if args.skip_accuracy else bench_lfw_accuracy(base, args.datasets, args.lfw_pairs)
        masked_lines = [] if args.skip_masked_ident else bench_masked_identification(base, args.datasets, work_dir)

    results = Results(build_rows, stages, identify_rows, detection_lines, accuracy_lines, masked_lines)
    section = render_section(base, args, results)
    print(section)
    if not args.no_doc:
        plot_path = args.doc.parent / "img" / "bench_throughput.png"
        plot_throughput(build_rows, plot_path)
        write_section(args.doc, section)
        logger.info("wrote %s and %s", args.doc, plot_path)

    if not args.skip_search:
        import bench_search

        bench_search.main(["--doc", str(args.doc)] + (["--no-doc"] if args.no_doc else []))
    return 0


# Gallery build.


def bench_gallery_build(base: Settings, datasets: Path, count: int, work_dir: Path) -> list[BuildRow]:
    """Time the reference loop and ``build_gallery`` chunk by chunk on the same LFW photos."""
    photos = sample_lfw(datasets / "lfw", count)
    reference = ReferencePipeline(base, margin=32)
    warm_up = [decode(item.path, base) for item in photos[:2]]
    reference.analyze_batch(warm_up)

    rows = []
    for label, changes in BUILD_CONFIGS:
        settings = base.replace(db_path=work_dir / f"{len(rows)}.sqlite3", **changes)
        rows.append(asyncio.run(_build_one(label, settings, reference, photos, work_dir / f"tree{len(rows)}")))
        logger.info(
            "%s: reference %.2f photos/s, maskid %.2f photos/s",
            label, rows[-1].reference_rate, rows[-1].maskid_rate,
        )  # fmt: skip
    return rows


async def _build_one(
    label: str, settings: Settings, reference: ReferencePipeline, photos: list[DatasetImage], tree: Path
) -> BuildRow:
    service = FaceService.from_settings(settings)
    reference_s = maskid_s = 0.0
    async with service:
        # Warm-up on two other photos so that model loading is not timed.
        await build_gallery(service, link_tree(photos[-2:], tree / "warm-up"), show_progress=False)
        for start in range(0, len(photos) - 2, CHUNK):
            chunk = photos[start : min(start + CHUNK, len(photos) - 2)]
            root = link_tree(chunk, tree / f"chunk{start}")

            began = time.perf_counter()
            for item in chunk:
                reference.analyze_batch([decode(item.path, settings)])
            reference_s += time.perf_counter() - began

            began = time.perf_counter()
            summary = await build_gallery(service, root, show_progress=False)
            maskid_s += time.perf_counter() - began
            if summary.enrolled != len(chunk):
                logger.warning("%s: %d of %d photos enrolled", label, summary.enrolled, len(chunk))
    return BuildRow(label, len(photos) - 2, reference_s, maskid_s)


def sample_lfw(lfw: Path, count: int) -> list[DatasetImage]:
    """Return ``count`` LFW photos spread evenly over the sorted dataset, plus two for warming up."""
    images = scan_dataset(lfw)
    step = max(1, len(images) // (count + 2))
    return images[::step][: count + 2]


def link_tree(photos: Sequence[DatasetImage], root: Path) -> Path:
    """Lay ``photos`` out as ``root/<person>/<file>`` symbolic links, the layout ``build_gallery`` reads."""
    for item in photos:
        folder = root / item.path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / item.path.name).symlink_to(item.path.resolve())
    return root


def decode(path: Path, settings: Settings) -> DecodedImage:
    return load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


# Identify.


def bench_identify(base: Settings, datasets: Path, repeats: int) -> list[IdentifyRow]:
    """Time one photo's identification, reference and maskid alternating, for each configuration."""
    photo = identify_photo(datasets / IDENTIFY_PHOTO)
    rng = np.random.default_rng(0)
    originals = unit_rows(rng, GALLERY_PEOPLE, 512)
    reference = ReferencePipeline(base, margin=32)

    def run_reference() -> int:
        image = load_image(photo, max_bytes=base.max_image_bytes, max_pixels=base.max_image_pixels)
        faces = reference.analyze_batch([image])[0]
        return int(np.argmax(originals @ faces[0].embedding))

    rows = []
    for label, changes in IDENTIFY_CONFIGS:
        settings = base.replace(**changes)
        service = FaceService.from_settings(settings)
        fill_random_gallery(service, rng)

        def run_maskid(service: FaceService = service) -> int:
            """Rank gallery people for the first face as FaceService.identify_face does, without the name lookup."""
            image = load_image(photo, max_bytes=base.max_image_bytes, max_pixels=base.max_image_pixels)
            faces = service.pipeline.analyze(image)
            masked, _ = service.mask_status(faces[0])
            candidates = service.search(faces[0], top_k=3, chat_id=None, masked=masked)
            return len(faces) if candidates else 0

        run_reference()
        found = run_maskid()
        if found != 1:
            logger.warning("%s found %d faces with candidates in the identify photo, expected 1", label, found)
        row = IdentifyRow(label, [], [])
        for _ in range(repeats):
            row.reference_ms.append(timed_ms(run_reference))
            row.maskid_ms.append(timed_ms(run_maskid))
        rows.append(row)
        logger.info(
            "%s: reference p50 %.0f ms, maskid p50 %.0f ms",
            label, statistics.median(row.reference_ms), statistics.median(row.maskid_ms),
        )  # fmt: skip
    return rows


def identify_photo(source: Path) -> bytes:
    """Return the test photo resized to 1280x960, as JPEG bytes of quality 92."""
    import io

    with Image.open(source) as image:
        resized = image.convert("RGB").resize(IDENTIFY_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill_random_gallery(service: FaceService, rng: np.random.Generator) -> None:
    """Add 10,000 people with one original and two synthetic-mask random unit templates each."""
    dim = service.pipeline.embedder.embedding_dim
    people = np.repeat(np.arange(1, GALLERY_PEOPLE + 1), 3)
    synthetic = np.tile([False, True, True], GALLERY_PEOPLE)
    service.index.add(np.arange(1, len(people) + 1), people, unit_rows(rng, len(people), dim), synthetic=synthetic)


def timed_ms(function: Callable[[], object]) -> float:
    began = time.perf_counter()
    function()
    return (time.perf_counter() - began) * 1000


# Where the time goes.


def bench_stages(base: Settings, datasets: Path, count: int = 32) -> dict[str, tuple[str, float, str]]:
    """Time each stage of a gallery build and of the reference loop on the same LFW photos.

    Returns:
        For each stage's key: its label, its time in milliseconds and what that time is per.
    """
    from facenet_pytorch.models.mtcnn import fixed_image_standardization
    from facenet_pytorch.models.utils.detect_face import extract_face

    from core.masks import synthesize_masked
    from core.pipeline import masked_variants_seed

    photos = sample_lfw(datasets / "lfw", count)[:count]
    images = [decode(item.path, base) for item in photos]
    pipeline = FacePipeline.from_settings(base)
    fp32 = FacePipeline.from_settings(base.replace(embedding_precision="fp32")).embedder
    reference = ReferencePipeline(base, margin=32)
    reference.analyze_batch(images[:1])
    mtcnn, network = reference._load()
    pipeline.analyze_batch(images[:1])
    fp32.embed(np.zeros((1, 160, 160, 3), dtype=np.uint8))

    stages: dict[str, tuple[str, float, str]] = {}

    def stage(key: str, label: str, unit: str, function: Callable[[], object], count: int = len(images)) -> object:
        began = time.perf_counter()
        result = function()
        stages[key] = (label, (time.perf_counter() - began) * 1000 / count, unit)
        return result

    pictures = [Image.fromarray(image.pixels) for image in images]
    boxes = stage(
        "reference_mtcnn",
        "reference: facenet-pytorch MTCNN",
        "photo",
        lambda: [mtcnn.detect(picture)[0] for picture in pictures],
    )
    reference_crops = [
        fixed_image_standardization(extract_face(picture, found[0], 160, 32))
        for picture, found in zip(pictures, boxes, strict=True)
        if found is not None
    ]
    with torch.inference_mode():
        stage(
            "reference_embedding",
            "reference: InceptionResnetV1, batch size 1",
            "face",
            lambda: [network(crop[None]) for crop in reference_crops],
            len(reference_crops),
        )

    detections = stage(
        "detection",
        "maskid: detection (MTCNN with retry pass)",
        "photo",
        lambda: pipeline.detector.detect_batch([image.pixels for image in images]),
    )
    chosen = [
        main_face_detection(found, image.width, image.height) for image, found in zip(images, detections, strict=True)
    ]
    crops = np.stack(
        [align_face(image.pixels, face, pipeline.alignment) for image, face in zip(images, chosen, strict=True)]
    )
    stage("fp32_flip", "maskid: embedding, fp32, with flip, batches of 32", "face", lambda: fp32.embed(crops))
    stage(
        "flip",
        f"maskid: embedding, {pipeline.embedder.resolved_precision}, with flip, batches of 32",
        "face",
        lambda: pipeline.embedder.embed(crops),
    )
    stage(
        "no_flip",
        f"maskid: embedding, {pipeline.embedder.resolved_precision}, no flip, batches of 32",
        "face",
        lambda: pipeline.embedder.embed_with_features(crops, flip=False),
    )
    stage(
        "mask_drawing",
        f"maskid: drawing {base.synthetic_masks} synthetic masks",
        "photo",
        lambda: [
            synthesize_masked(
                image.pixels, face.landmarks, base.synthetic_masks, seed=masked_variants_seed(image.sha256)
            )
            for image, face in zip(images, chosen, strict=True)
        ],
    )
    stage(
        "masks",
        f"maskid: drawing, cropping and embedding {base.synthetic_masks} synthetic masks (default)",
        "photo",
        lambda: [
            pipeline.analyze_masked(image, face, base.synthetic_masks)
            for image, face in zip(images, chosen, strict=True)
        ],
    )

    return stages


# Masked identification with and without mirrored synthetic-mask templates.


def bench_masked_identification(base: Settings, datasets: Path, work_dir: Path) -> list[str]:
    """Run ``maskid eval ident --standard`` with synthetic-mask templates flipped and not flipped.

    The second run reuses the first one's embedding cache without its synthetic-mask
    descriptors: the cache key does not include ``synthetic_mask_flip``, so those must be
    computed again, while every photo's own descriptor is the same in both runs.
    """
    import json
    import sqlite3
    import subprocess

    cache = work_dir / "ident-cache"
    results = {}
    for flip in (True, False):
        if not flip:
            with sqlite3.connect(cache / "embeddings.sqlite3") as connection:
                connection.execute("DELETE FROM masked")
        # Both runs get this process's model, so a change of the default in between cannot mix two models.
        environment = dict(os.environ, MASKID_MODEL=base.model, MASKID_SYNTHETIC_MASK_FLIP="1" if flip else "0")
        command = [
            sys.executable, "-m", "cli.main", "eval", "ident", "--standard", str(datasets), "--json",
            "--cache-dir", str(cache), "--out", str(work_dir / f"ident-{flip}"),
        ]  # fmt: skip
        logger.info("masked identification, synthetic-mask flip %s: %s", flip, " ".join(command))
        output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
        results[flip] = json.loads(output[output.index("{") :])

    lines = [
        "| synthetic-mask templates | masked rank-1 | masked TPIR @ 1% FPIR "
        "| unmasked rank-1 | unmasked TPIR @ 1% FPIR |",
        "| --- | --- | --- | --- | --- |",
    ]
    for flip, label in ((True, "flip-averaged"), (False, "one pass, not mirrored (default)")):
        cells = []
        for name in ("masked", "unmasked"):
            probe_set = next(item for item in results[flip]["probe_sets"] if item["name"] == name)
            point = next(item for item in probe_set["operating_points"] if item["target_fpir"] == 0.01)
            cells += [f"{probe_set['rank1']:.3f}", f"{point['tpir']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# Detection on a downscaled copy.


def bench_detection_downscale(base: Settings, datasets: Path) -> list[str]:
    """Compare detection at full resolution with detection on the downscaled copy on large smoke photos."""
    folder = datasets / "smoke" / "deepface_tests_dataset"
    photos = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            if max(image.size) > base.detection_max_side:
                photos.append(path)
    full = FacePipeline.from_settings(base.replace(detection_max_side=0))
    small = FacePipeline.from_settings(base)
    # Share one embedder, so the crops are compared in one arithmetic.
    small.embedder = full.embedder

    counts = {"full": 0, "small": 0}
    times = {"full": 0.0, "small": 0.0}
    main_found = {"full": 0, "small": 0}
    similarities = []
    for path in photos:
        image = decode(path, base)
        mains = {}
        for name, pipeline in (("full", full), ("small", small)):
            began = time.perf_counter()
            detections = pipeline.detector.detect(image.pixels)
            times[name] += time.perf_counter() - began
            counts[name] += len(detections)
            faces = pipeline.embed_detections([image], [detections])[0]
            mains[name] = main_face(faces, image.width, image.height)
            main_found[name] += mains[name] is not None
        if mains["full"] is not None and mains["small"] is not None:
            similarities.append(float(mains["full"].embedding @ mains["small"].embedding))

    side = base.detection_max_side
    return [
        "| detection | faces found | photos with a main face | detection time per photo |",
        "| --- | --- | --- | --- |",
        f"| full resolution | {counts['full']} | {main_found['full']}/{len(photos)} | "
        f"{times['full'] * 1000 / len(photos):.0f} ms |",
        f"| downscaled to {side} px (default) | {counts['small']} | {main_found['small']}/{len(photos)} | "
        f"{times['small'] * 1000 / len(photos):.0f} ms |",
        "",
        f"Main faces found both ways: {len(similarities)}. Cosine similarity of their descriptors: "
        f"median {statistics.median(similarities):.4f}, minimum {min(similarities):.4f} "
        f"({sum(s > 0.9 for s in similarities)} above 0.9).",
    ]


# LFW accuracy per embedding precision.


def bench_lfw_accuracy(base: Settings, datasets: Path, limit: int | None) -> list[str]:
    """Score the LFW dev pairs with each embedding precision on the same detections and crops."""
    pairs = read_pairs(datasets / "lfw-pairs-dev.txt", datasets / "lfw")[:limit]
    paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
    pipeline = FacePipeline.from_settings(base)
    crops: dict[Path, np.ndarray] = {}
    logger.info("LFW accuracy: detecting faces in %d photos", len(paths))
    for start in range(0, len(paths), 32):
        images = [decode(path, base) for path in paths[start : start + 32]]
        for path, image, detections in zip(
            paths[start : start + 32],
            images,
            pipeline.detector.detect_batch([image.pixels for image in images]),
            strict=True,
        ):
            if detections:
                chosen = main_face_detection(detections, image.width, image.height)
                crops[path] = align_face(image.pixels, chosen, pipeline.alignment)

    same = np.array([pair.same for pair in pairs])
    keys = list(crops)
    stacked = np.stack([crops[key] for key in keys])
    lines = [
        "| embedding | accuracy | std over folds | threshold | embedding time per photo |",
        "| --- | --- | --- | --- | --- |",
    ]
    accuracies = {}
    for precision, flip in (("fp32", True), ("bf16", True), ("bf16", False)):
        embedder = FacePipeline.from_settings(base.replace(embedding_precision=precision)).embedder
        began = time.perf_counter()
        vectors = dict(zip(keys, embedder.embed_with_features(stacked, flip=flip)[0], strict=True))
        elapsed = time.perf_counter() - began
        result = k_fold_accuracy(pair_scores(pairs, vectors), same, split_folds(pairs))
        label = f"{precision} + flip" if flip else f"{precision}, no flip"
        accuracies[label] = result.accuracy
        lines.append(
            f"| {label} | {result.accuracy:.4f} | {result.accuracy_std:.4f} | {result.threshold:.3f} | "
            f"{elapsed * 1000 / len(keys):.1f} ms |"
        )
        logger.info("LFW accuracy %s: %.4f", label, result.accuracy)
    lines.append("")
    lines.append(f"{len(pairs)} pairs, {len(crops)} of {len(paths)} photos with a face.")
    change = (accuracies["bf16 + flip"] - accuracies["fp32 + flip"]) * 100
    # The last line is the summary for the targets table, and render_section leaves it out of this table.
    lines.append(
        f"bf16 + flip {accuracies['bf16 + flip']:.4f}, fp32 + flip {accuracies['fp32 + flip']:.4f} "
        f"({change:+.2f} points) | {'yes' if change >= -0.2 else 'no'}"
    )
    return lines


def main_face_detection(detections, width: int, height: int):
    """Pick the same face as :func:`core.pipeline.main_face`, before embedding."""
    from core.pipeline import Face

    faces = [Face(detection, np.zeros(1, dtype=np.float32)) for detection in detections]
    return main_face(faces, width, height).detection


# Output.


def render_section(base: Settings, args: argparse.Namespace, results: Results) -> str:
    """Return the Markdown section, between its markers, with every table of this run."""
    threads = base.torch_threads or torch.get_num_threads()
    build_rows = results.build_rows
    default_build = build_rows[0]
    build_ratio = default_build.maskid_rate / default_build.reference_rate
    best_build = max(build_rows, key=lambda row: row.maskid_rate / row.reference_rate)
    identify_ratio = statistics.median(results.identify_rows[0].maskid_ms) / statistics.median(
        results.identify_rows[0].reference_ms
    )
    lines = [
        START_MARKER,
        "## Throughput against the plain facenet-pytorch loop",
        "",
        "Written by `scripts/bench.py`, which then runs `scripts/bench_search.py` for the search-at-scale section; "
        "rerun it to replace both (about 45 minutes on 2 cores, `--skip-search` for this section alone):",
        "",
        "```sh",
        "MASKID_TORCH_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/bench.py --datasets ../shared/datasets",
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"PyTorch {torch.__version__} with {threads} thread(s), model `{base.model}`, native bfloat16: "
        f"{'yes' if cpu_has_native_bf16() else 'no'}. "
        "The reference is facenet-pytorch's MTCNN on each photo, then InceptionResnetV1 at batch "
        "size 1 (margin 32, the same converted weights). Reference and maskid run interleaved "
        "in one process, so load from other jobs slows both alike: compare the ratios, "
        "not the absolute times, across runs.",
        "",
        "Speed-ups that are now the defaults of every path (gallery build, identify, the bot):",
        "",
        "- the embedding network runs under bfloat16 autocast on CPUs with native bfloat16 "
        "instructions (`MASKID_EMBEDDING_PRECISION=auto`); descriptors stay float32 and the model id is unchanged;",
        "- synthetic-mask templates are embedded without the mirrored crop (`MASKID_SYNTHETIC_MASK_FLIP=0`);",
        f"- MTCNN searches photos longer than {base.detection_max_side} px on a downscaled copy "
        "(`MASKID_DETECTION_MAX_SIDE`), and the face is cropped from the full-resolution photo.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| gallery build at least 2.5x the reference's photos/s | {build_ratio:.2f}x with the defaults, "
        f"{best_build.maskid_rate / best_build.reference_rate:.2f}x at best ({best_build.label}) | "
        f"{'yes' if build_ratio >= 2.5 else 'no'} |",
        f"| identify p50 at most 0.5x the reference's | {identify_ratio:.2f}x "
        f"| {'yes' if identify_ratio <= 0.5 else 'no'} |",
    ]
    if results.accuracy_lines:
        lines.append(f"| LFW dev-pairs accuracy within 0.2 points of fp32 | {results.accuracy_lines[-1]} |")
    lines += [
        "",
        "### Gallery build",
        "",
        f"{default_build.photos} LFW photos (250x250) spread over the dataset. maskid runs the whole "
        "`maskid gallery build` path into a temporary SQLite gallery: decoding, hashing, detection "
        f"with its retry pass, embedding, synthetic-mask templates and storage, in chunks of {CHUNK} "
        "photos alternating with the reference loop on the same chunk.",
        "",
        *build_table(build_rows),
        "",
        "![Gallery build throughput](img/bench_throughput.png)",
        "",
        "Where the time goes, on 32 of those photos:",
        "",
        *stage_table(results.stages),
        "",
        stage_summary(results.stages, build_rows[-1]),  # BUILD_CONFIGS ends with the leanest configuration
        "",
        "### Identify latency",
        "",
        f"One {IDENTIFY_SIZE[0]}x{IDENTIFY_SIZE[1]} JPEG with one face (`{IDENTIFY_PHOTO}` resized), "
        f"decoded from bytes. The gallery has {GALLERY_PEOPLE:,} people with random unit templates. "
        "maskid has one original and two synthetic-mask templates per person and searches them "
        "by the mask-aware rule after the mask classifier, and the reference has one template per "
        f"person and searches it exactly. {args.repeats} runs each, alternating. The lookup of the "
        "names of the three best people in SQLite is not timed.",
        "",
        *identify_table(results.identify_rows),
        "",
        "### Detection on a downscaled copy",
        "",
        f"The photos of `smoke/deepface_tests_dataset` longer than {base.detection_max_side} px, "
        "with faces cropped from the full-resolution photo either way. On the copy the smallest "
        f"face found in a photo of side L is {base.min_face_size} x L / {base.detection_max_side} "
        "pixels instead of "
        f"{base.min_face_size}.",
        "",
        *results.detection_lines,
    ]
    if results.accuracy_lines:
        lines += [
            "",
            "### Embedding precision and LFW accuracy",
            "",
            "LFW dev pairs (10 folds), one detection pass, the same margin-32 crops embedded in each "
            "precision. Synthetic-mask templates play no part in this protocol.",
            "",
            *results.accuracy_lines[:-1],
        ]
    if results.masked_lines:
        lines += [
            "",
            "### Synthetic-mask templates without the mirrored crop",
            "",
            "The rof protocol (`maskid eval ident --standard`, mask-aware matcher), once with "
            "flip-averaged synthetic-mask templates and once with the default single pass:",
            "",
            *results.masked_lines,
        ]
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def stage_table(stages: dict[str, tuple[str, float, str]]) -> list[str]:
    lines = ["| stage | time | per |", "| --- | --- | --- |"]
    lines += [f"| {label} | {milliseconds:.1f} ms | {unit} |" for label, milliseconds, unit in stages.values()]
    return lines


def stage_summary(stages: dict[str, tuple[str, float, str]], lean: BuildRow) -> str:
    """Explain from the stage times why the default build is or is not 2.5x the reference loop."""
    milliseconds = {key: value[1] for key, value in stages.items()}
    reference = milliseconds["reference_mtcnn"] + milliseconds["reference_embedding"]
    budget = reference / 2.5
    default = milliseconds["detection"] + milliseconds["flip"] + milliseconds["masks"]
    plain = milliseconds["detection"] + milliseconds["no_flip"]
    return (
        f"Per photo the reference loop spends {reference:.0f} ms in these stages, so 2.5x its "
        f"throughput leaves {budget:.0f} ms a photo. The default build spends {default:.0f} ms in "
        f"them: detection {milliseconds['detection']:.0f} ms, the photo's own flip-averaged "
        f"descriptor {milliseconds['flip']:.0f} ms and the two synthetic-mask templates "
        f"{milliseconds['masks']:.0f} ms, of which drawing the masks takes "
        f"{milliseconds['mask_drawing']:.0f} ms. It stores three templates where the reference "
        "stores one, and the masked identification results below depend on the extra two. With "
        f"synthetic masks and flip off, maskid stores what the reference stores and spends "
        f"{plain:.0f} ms a photo in these stages. Its measured ratio ({lean.maskid_rate / lean.reference_rate:.2f}x) "
        "also counts decoding, hashing, the retry pass and the SQLite writes, which the reference loop does not do."
    )


def build_table(rows: list[BuildRow]) -> list[str]:
    lines = [
        "| configuration | reference photos/s | maskid photos/s | maskid / reference |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row.maskid_rate / row.reference_rate
        lines.append(f"| {row.label} | {row.reference_rate:.2f} | {row.maskid_rate:.2f} | **{ratio:.2f}x** |")
    return lines


def identify_table(rows: list[IdentifyRow]) -> list[str]:
    lines = [
        "| configuration | reference p50 | maskid p50 | maskid p95 | maskid p50 / reference p50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        reference_p50 = statistics.median(row.reference_ms)
        maskid_p50 = statistics.median(row.maskid_ms)
        maskid_p95 = float(np.percentile(row.maskid_ms, 95))
        lines.append(
            f"| {row.label} | {reference_p50:.0f} ms | {maskid_p50:.0f} ms | {maskid_p95:.0f} ms | "
            f"**{maskid_p50 / reference_p50:.2f}** |"
        )
    return lines


def write_section(doc: Path, section: str) -> None:
    """Replace the text between the markers in ``doc``, or append the section when they are missing."""
    text = doc.read_text(encoding="utf-8")
    if START_MARKER in text and END_MARKER in text:
        head, _, rest = text.partition(START_MARKER)
        _, _, tail = rest.partition(END_MARKER)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text, encoding="utf-8")


def plot_throughput(rows: list[BuildRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [textwrap.fill(row.label.removeprefix("maskid, ").removeprefix("maskid "), 22) for row in rows]
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(9, 4))
    axes.bar(positions - 0.2, [row.reference_rate for row in rows], 0.4, label="reference loop")
    axes.bar(positions + 0.2, [row.maskid_rate for row in rows], 0.4, label="maskid gallery build")
    axes.set_xticks(positions, labels, fontsize=8)
    axes.set_ylabel("photos per second")
    axes.set_title("Gallery build throughput on LFW, same run")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
