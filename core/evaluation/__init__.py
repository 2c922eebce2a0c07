"""Evaluation protocols: LFW pair verification and, later, open-set identification."""
