"""LFW pairs accuracy of the plain facenet-pytorch recipe, as a reference for maskid's numbers.

The recipe most projects use: ``MTCNN(image_size=160, margin=M)`` returns the
largest face as a standardised crop, and ``InceptionResnetV1`` embeds it one
photo at a time. The network carries maskid's converted CASIA-WebFace weights,
so only detection, cropping and test-time handling differ from maskid.

Usage::

    .venv/bin/python scripts/lfw_reference.py ../shared/datasets/lfw-pairs-dev.txt ../shared/datasets/lfw --margin 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image
from tqdm import tqdm

from core.evaluation.lfw import k_fold_accuracy, read_pairs, split_folds
from core.facenet_weights import build_model, load_facenet_state_dict
from core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--margin", type=int, nargs="+", default=[32])
    args = parser.parse_args()

    settings = Settings.from_env()
    model = build_model(load_facenet_state_dict(settings.facenet_graph, settings.cache_dir))
    pairs = read_pairs(args.pairs, args.images)
    paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
    same = np.array([pair.same for pair in pairs])

    for margin in args.margin:
        mtcnn = MTCNN(image_size=160, margin=margin)
        started = time.perf_counter()
        vectors = {}
        for path in tqdm(paths, desc=f"margin {margin}", unit="photo"):
            crop = mtcnn(Image.open(path).convert("RGB"))
            if crop is not None:
                with torch.inference_mode():
                    vectors[path] = model(crop[None])[0].numpy()
        scores = np.array(
            [
                float(vectors[p.first] @ vectors[p.second]) if p.first in vectors and p.second in vectors else np.nan
                for p in pairs
            ]
        )
        result = k_fold_accuracy(scores, same, split_folds(pairs))
        elapsed = time.perf_counter() - started
        print(
            f"facenet-pytorch margin {margin}: accuracy {result.accuracy:.4f} ± {result.accuracy_std:.4f}, "
            f"threshold {result.threshold:.3f}, no face in {len(paths) - len(vectors)} photos, {elapsed:.0f} s"
        )


if __name__ == "__main__":
    main()
