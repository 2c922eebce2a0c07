"""Builders shared by the service and model tests: a service on a real SQLite file, and head-file metadata."""

from __future__ import annotations

from core.backbones import FaceNetCasia
from core.mask_detection import shipped_classifier
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.siamese.model_file import SiameseModelInfo
from core.storage import SqliteGalleryStore


def service_for(settings: Settings, pipeline: FacePipeline) -> FaceService:
    """Return a service over the SQLite gallery at ``settings.db_path``, with the shipped mask classifier."""
    return FaceService(
        settings,
        SqliteGalleryStore.from_settings(settings),
        pipeline,
        mask_classifier=shipped_classifier(pipeline.feature_model_id),
    )


def head_info(layer: str) -> SiameseModelInfo:
    """Return metadata for a test head on FaceNet CASIA's trunk up to ``layer``."""
    return SiameseModelInfo(
        base_model_id=FaceNetCasia.model_id,
        layer=layer,
        loss="triplet",
        seed=0,
        dataset="lfw",
        training_people=1,
        validation_people=1,
        masks_per_photo=3,
        best_epoch=0,
    )
