"""Siamese fine-tuning of FaceNet's last layers for masked faces.

The frozen FaceNet trunk runs once per aligned crop (:mod:`core.siamese.trunk`) and its
output is stored on disk (:mod:`core.siamese.cache`). A small head shared by both
branches of the twin network (:mod:`core.siamese.head`) is then trained on pairs or
triplets of masked and unmasked crops (:mod:`core.siamese.losses`,
:mod:`core.siamese.training`). :mod:`core.siamese.backbone` runs trunk and head
together as an ordinary :class:`~core.backbones.Backbone`.
"""
