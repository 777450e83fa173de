"""Generators of synthetic expression images behind a registry, and the writer they share.

Importing this package registers every generator; heavy libraries (diffusers, transformers)
load only when a generator is created.
"""

from fersynth.generate.base import Generator, WorkItem, merge_shards, run_generation
from fersynth.generate.registry import (
    create_generator,
    get_generator_entry,
    list_generators,
    register_generator,
)

__all__ = [
    "Generator",
    "WorkItem",
    "create_generator",
    "get_generator_entry",
    "list_generators",
    "merge_shards",
    "register_generator",
    "run_generation",
]

from fersynth.generate import own, sd  # noqa: E402, F401
