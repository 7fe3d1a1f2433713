"""Checkpoint tree: layout of the published files and writers of tiny / real-size random variants."""

from stepaudio.checkpoints.registry import register_writer, write_tree, writers

__all__ = ["register_writer", "write_tree", "writers"]
