"""Checkpoint tree: layout of the published files and writers of tiny / real-size random variants."""

from stepaudio.checkpoints.registry import VariantUnavailable, register_writer, write_tree, writers

__all__ = ["VariantUnavailable", "register_writer", "write_tree", "writers"]
