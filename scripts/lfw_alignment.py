"""Compare face alignments on the LFW pairs: margin crops at several margins against landmark warps.

For every image in the pairs file, MTCNN runs once (results cached in the output
folder). Each alignment then cuts the crops, and FaceNet embeds them with and
without the mirrored crop averaged in. The script prints a Markdown table of
10-fold accuracy and, with ``--template``, the mean landmark positions in a
margin-32 crop (the source of ``core.alignment.FACENET_TEMPLATE_160``).

Usage::

    .venv/bin/python scripts/lfw_alignment.py ../shared/datasets/lfw-pairs-dev.txt ../shared/datasets/lfw \\
        --configs margin0 margin32 margin44 similarity32 similarity44 --out /tmp/lfw-alignment
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.alignment import AlignmentConfig, align_face
from core.backbones import FaceNetCasia
from core.detection import DetectedFace, FaceDetector
from core.embedding import Embedder
from core.evaluation.lfw import k_fold_accuracy, read_pairs, split_folds
from core.images import load_image
from core.settings import Settings


def central_face(faces: list[DetectedFace], width: int, height: int) -> DetectedFace | None:
    """Pick the face whose box centre is nearest the image centre (LFW centres the labelled person)."""
    if not faces:
        return None

    def distance(face: DetectedFace) -> float:
        cx = (face.box[0] + face.box[2]) / 2
        cy = (face.box[1] + face.box[3]) / 2
        return (cx - width / 2) ** 2 + (cy - height / 2) ** 2

    return min(faces, key=distance)


def detect_all(paths: list[Path], detector: FaceDetector, settings: Settings) -> dict[Path, DetectedFace | None]:
    faces = {}
    for path in tqdm(paths, desc="detect", unit="img"):
        image = load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        faces[path] = central_face(detector.detect(image.pixels), image.width, image.height)
    return faces


def parse_config(name: str) -> AlignmentConfig:
    method = "similarity" if name.startswith("similarity") else "margin"
    return AlignmentConfig(method=method, margin=int(name.removeprefix(method)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--configs", nargs="*", default=["margin32", "similarity32"])
    parser.add_argument("--out", type=Path, default=Path("lfw-alignment"))
    parser.add_argument("--template", action="store_true", help="print the mean landmarks in a margin-32 crop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    settings = Settings.from_env()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(args.pairs, args.images)
    paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
    detections_file = args.out / "detections.pkl"
    if detections_file.is_file():
        faces = pickle.loads(detections_file.read_bytes())
    else:
        detector = FaceDetector(
            min_face_size=settings.min_face_size, min_probability=settings.min_detection_probability
        )
        faces = detect_all(paths, detector, settings)
        detections_file.write_bytes(pickle.dumps(faces))
    missing = [path for path, face in faces.items() if face is None]
    print(f"{len(paths)} images, no face in {len(missing)}: {[path.name for path in missing[:10]]}")

    if args.template:
        template_points = []
        for face in faces.values():
            if face is None:
                continue
            x1, y1, x2, y2 = face.box
            grow_x, grow_y = 32 * (x2 - x1) / 128 / 2, 32 * (y2 - y1) / 128 / 2
            left, top = x1 - grow_x, y1 - grow_y
            scale_x, scale_y = 160 / (x2 - x1 + 2 * grow_x), 160 / (y2 - y1 + 2 * grow_y)
            template_points.append((face.landmarks - [left, top]) * [scale_x, scale_y])
        mean = np.mean(template_points, axis=0)
        print("mean landmarks in a margin-32 160 px crop:\n", np.round(mean, 1).tolist())

    embedder = Embedder(FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir), flip=False)
    same = np.array([pair.same for pair in pairs])
    folds = split_folds(pairs)
    rows = []
    for name in args.configs:
        config = parse_config(name)
        started = time.perf_counter()
        crops, index = [], {}
        for path, face in faces.items():
            if face is None:
                continue
            image = load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
            index[path] = len(crops)
            crops.append(align_face(image.pixels, face, config))
        crops = np.stack(crops)
        plain = embedder.embed(crops)
        mirrored = embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]))
        fused = plain + mirrored
        fused /= np.linalg.norm(fused, axis=1, keepdims=True)
        for variant, vectors in (("", plain), ("+flip", fused)):
            scores = np.array(
                [
                    float(vectors[index[p.first]] @ vectors[index[p.second]])
                    if p.first in index and p.second in index
                    else np.nan
                    for p in pairs
                ]
            )
            result = k_fold_accuracy(scores, same, folds)
            rows.append((name + variant, result.accuracy, result.accuracy_std, result.threshold))
            print(f"{name + variant}: {result.accuracy:.4f} ± {result.accuracy_std:.4f} at {result.threshold:.3f}")
        print(f"{name}: {time.perf_counter() - started:.0f} s")
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    print("\n| alignment | accuracy | std | threshold |\n| --- | --- | --- | --- |")
    for name, accuracy, std, threshold in rows:
        print(f"| {name} | {accuracy:.4f} | {std:.4f} | {threshold:.3f} |")


if __name__ == "__main__":
    main()
