"""Prompt templates for zero-shot classification: each has one ``{}`` for the class name.

ImageNet uses the 80 templates OpenAI published with CLIP (its ``Prompt_Engineering_for_
ImageNet`` notebook); the other sets use short sets in the same style. Shared by
``pipeline.overlap --checkpoint`` and ``training.run --zeroshot`` (which re-exports them).
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

MNIST_TEMPLATES: tuple[str, ...] = ('a photo of the number: "{}".',)

FASHION_MNIST_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}, a type of clothing.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
)

STL10_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
)

SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {}.",
)

BUILTIN: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "cifar10": CIFAR_TEMPLATES,
    "cifar100": CIFAR_TEMPLATES,
    "mnist": MNIST_TEMPLATES,
    "fashion-mnist": FASHION_MNIST_TEMPLATES,
    "stl10": STL10_TEMPLATES,
}


class TemplatesError(ValueError):
    """A --templates file that is missing, empty, or has a line without ``{}``."""


def templates_for(kind: str) -> tuple[str, ...]:
    """Built-in templates for an eval-set kind (the simple set for imagefolder and wds)."""
    return BUILTIN.get(kind, SIMPLE_TEMPLATES)


def read_templates(path: str | Path) -> tuple[str, ...]:
    """One template per line, each with exactly one ``{}``; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise TemplatesError(f"--templates {p}: not found")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    templates = tuple(line for line in lines if line)
    if not templates:
        raise TemplatesError(f"--templates {p}: no templates (one per line, each with {{}})")
    for n, line in enumerate(lines, 1):
        if line and line.count("{}") != 1:
            raise TemplatesError(
                f"--templates {p}: line {n} {line!r} needs exactly one {{}} for the class name"
            )
        if line:
            try:
                line.format("x")
            except (IndexError, KeyError, ValueError):
                raise TemplatesError(
                    f"--templates {p}: line {n} {line!r}: braces other than {{}} must be "
                    "doubled ({{{{ and }}}})"
                ) from None
    return templates
