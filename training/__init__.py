"""The training stage's library: what a Ray Train run writes and reads back.

Today it holds the checkpoint format (:mod:`training.checkpoint`); the worker loop, the run launcher and the
training config still live in ``workflows/`` and move here with issue #14's package split.
"""
