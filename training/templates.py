"""Prompt templates for zero-shot classification: they live in ``pipeline.overlap.templates``
so that ``training.run --zeroshot`` and ``pipeline.overlap --checkpoint`` share one set."""

from __future__ import annotations

from pipeline.overlap.templates import (
    BUILTIN,
    CIFAR_TEMPLATES,
    FASHION_MNIST_TEMPLATES,
    IMAGENET_TEMPLATES,
    MNIST_TEMPLATES,
    SIMPLE_TEMPLATES,
    STL10_TEMPLATES,
    TemplatesError,
    read_templates,
    templates_for,
)

__all__ = [
    "BUILTIN",
    "CIFAR_TEMPLATES",
    "FASHION_MNIST_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "MNIST_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "STL10_TEMPLATES",
    "TemplatesError",
    "read_templates",
    "templates_for",
]
