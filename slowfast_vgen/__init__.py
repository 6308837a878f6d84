"""slowfast_vgen: action-driven long video generation with slow-fast learning (SlowFast-VGen, ICLR 2025).

``from slowfast_vgen import SlowFastVGenPipeline`` is the diffusers entry point (:mod:`.pipeline`).

Importing the package is cheap (no torch, no diffusers: ``sfvgen --help`` stays fast). It arranges that
``DiffusionPipeline.from_pretrained(dir)`` loads a directory whose ``model_index.json`` names
``SlowFastVGenPipeline`` with :meth:`SlowFastVGenPipeline.from_pretrained`: right away when diffusers has
already loaded ``DiffusionPipeline``, else as soon as it does (a one-shot import hook on
``diffusers.pipelines.pipeline_utils``). diffusers' own lookup (``getattr(diffusers, _class_name)``,
then its generic component loader) cannot load these directories: their text encoder may come from a pip
package named in ``slowfast_vgen.json``, which only :func:`slowfast_vgen.model.load_model` reads.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import warnings

__all__ = ["SlowFastVGenPipeline", "SlowFastVGenPipelineOutput"]

_PIPELINE_NAME = "SlowFastVGenPipeline"
_DIFFUSION_PIPELINE_MODULE = "diffusers.pipelines.pipeline_utils"  # defines DiffusionPipeline


def __getattr__(name: str):
    if name in __all__:  # lazy: the pipeline imports torch and diffusers
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def names_this_pipeline(path) -> bool:
    """Whether ``path`` is a local model directory for :class:`SlowFastVGenPipeline`: its ``model_index.json``
    names it, or it has no index but a ``slowfast_vgen.json``."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return False
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return os.path.isfile(os.path.join(path, "slowfast_vgen.json"))
    try:
        with open(index, encoding="utf-8") as handle:
            return json.load(handle).get("_class_name") == _PIPELINE_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _route_diffusion_pipeline_loading(diffusion_pipeline: type) -> None:
    """Wrap ``DiffusionPipeline.from_pretrained``: our directories go to ``SlowFastVGenPipeline.from_pretrained``,
    everything else (other pipelines, subclasses, hub ids) to diffusers unchanged. Idempotent."""
    original = diffusion_pipeline.__dict__["from_pretrained"].__func__
    if getattr(original, "_routes_slowfast_vgen", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls is diffusion_pipeline and names_this_pipeline(pretrained_model_name_or_path):
            from .pipeline import SlowFastVGenPipeline

            return SlowFastVGenPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return original(cls, pretrained_model_name_or_path, **kwargs)

    from_pretrained._routes_slowfast_vgen = True
    diffusion_pipeline.from_pretrained = classmethod(from_pretrained)


def _route_quietly(module) -> None:
    try:
        _route_diffusion_pipeline_loading(module.DiffusionPipeline)
    except Exception as err:  # never break diffusers' own import
        warnings.warn(f"slowfast_vgen: DiffusionPipeline.from_pretrained will not load SlowFastVGenPipeline "
                      f"directories ({type(err).__name__}: {err}); use SlowFastVGenPipeline.from_pretrained")


class _AfterDiffusionPipelineImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: routes ``DiffusionPipeline.from_pretrained`` once diffusers has defined it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _DIFFUSION_PIPELINE_MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the regular finders (this one is gone)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_route(module):
            exec_module(module)
            _route_quietly(module)

        spec.loader.exec_module = exec_then_route
        return spec


if _DIFFUSION_PIPELINE_MODULE in sys.modules:
    _route_quietly(sys.modules[_DIFFUSION_PIPELINE_MODULE])
elif not any(isinstance(finder, _AfterDiffusionPipelineImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterDiffusionPipelineImport())
