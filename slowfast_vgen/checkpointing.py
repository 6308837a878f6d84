"""Crash-safe training checkpoints, without pickle.

A checkpoint is a directory ``checkpoint-<step>/`` holding

* ``unet/`` (``save_pretrained``, safetensors) — the slow weights Phi,
* ``ema/`` (optional) — the EMA copy of the UNet,
* ``action_encoder/`` and ``ema_action_encoder.safetensors`` (models with an action encoder),
* ``optimizer.safetensors`` — optimizer moments as tensors, the rest as JSON metadata,
* ``loop_records.safetensors`` (the slow-fast loop, inside an iteration) — the iteration's records,
  so a resume trains on the Temp-LoRAs collected with Phi as it was, not re-collects them,
* ``trainer_state.json`` — step, LR-schedule state, counters; written last.

It is written to a temporary directory and renamed when complete, so a crash mid-save leaves
the previous checkpoints intact; pruning to ``total_limit`` happens only after a successful
save. Loading checks completeness and reports a corrupt checkpoint by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import UserInputError
from .io_utils import (
    atomic_output_dir, atomic_output_file, atomic_write_json, digest_problem, file_digests, remove_stale_temporaries,
)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def save_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Optimizer state as safetensors (tensors) + JSON metadata (param groups, scalars); atomic."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().clone().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    with atomic_output_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Inverse of :func:`save_optimizer_state` (tensors are moved to the parameters' devices)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state: dict[int, dict] = {}
    for key, value in {**tensors, **json.loads(metadata.get("scalars", "{}"))}.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = json.loads(metadata["param_groups"])
    for group in groups:  # JSON turns tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_ema_state(ema: Any, path: str | os.PathLike) -> None:
    """A diffusers ``EMAModel``'s shadow weights as safetensors, its counters as JSON metadata; atomic."""
    state = ema.state_dict()
    tensors = {f"shadow.{i}": p.detach().clone().contiguous().cpu() for i, p in enumerate(state.pop("shadow_params"))}
    state.pop("collected_params", None)
    with atomic_output_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})


def load_ema_state(ema: Any, path: str | os.PathLike) -> None:
    """Inverse of :func:`save_ema_state`; a damaged file is a one-line error naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = json.loads((handle.metadata() or {})["state"])
            shadow = [handle.get_tensor(f"shadow.{i}") for i in range(len(handle.keys()))]
        ema.load_state_dict({**state, "shadow_params": shadow})
    except Exception as err:
        raise UserInputError(f"checkpoint file {path} is corrupt or does not fit: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def read_ema_model(directory: str | os.PathLike, model_cls: type) -> Any:
    """A diffusers ``EMAModel`` saved with its ``save_pretrained`` (a model folder whose config
    carries the EMA counters), read from safetensors only.

    ``EMAModel.from_pretrained`` does the same but loads the weights with pickle allowed: a
    ``diffusion_pytorch_model.bin`` put into a checkpoint's ``ema/`` would be unpickled on resume.
    """
    from diffusers.training_utils import EMAModel

    from .model import safetensors_only_kwargs

    directory = Path(directory)
    config = model_cls.load_config(directory)
    model = model_cls.from_pretrained(directory, **safetensors_only_kwargs(directory))
    ema = EMAModel(model.parameters(), model_cls=model_cls, model_config=model.config)
    ema.load_state_dict(config)  # decay, optimization_step, ... (the model's own keys are ignored)
    return ema


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    ema: Any | None = None,
    total_limit: int | None = None,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    extra_emas: dict[str, Any] | None = None,
    extra_tensors: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then prune the oldest beyond ``total_limit``.

    ``extra_tensors`` maps a name to (tensors, string metadata), written as ``<name>.safetensors``."""
    path = Path(output_dir) / f"checkpoint-{step}"
    remove_stale_temporaries(output_dir, "checkpoint-*")  # a killed run's half-written checkpoints (of other steps)
    with atomic_output_dir(path, "trainer_state.json") as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if ema is not None:
            ema.save_pretrained(str(tmp / "ema"))
        for name, module in (extra_modules or {}).items():
            module.save_pretrained(tmp / name, safe_serialization=True)
        for name, extra_ema in (extra_emas or {}).items():
            save_ema_state(extra_ema, tmp / f"{name}.safetensors")
        for name, (tensors, metadata) in (extra_tensors or {}).items():
            save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()},
                      str(tmp / f"{name}.safetensors"), metadata=metadata)
        save_optimizer_state(optimizer, tmp / "optimizer.safetensors")
        atomic_write_json(tmp / STATE_FILE, {"step": step, **state, "files": file_digests(tmp)})
    if total_limit:  # the oldest go; the checkpoint just written is always kept
        older = [old for old in list_checkpoints(output_dir) if checkpoint_step(old) < step]
        for old in older[:max(0, len(older) - (total_limit - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a ``checkpoint-<step>`` directory."""
    return int(CHECKPOINT_PATTERN.match(Path(path).name).group(1))


def check_no_newer_checkpoints(output_dir: str | os.PathLike, resumed_from: Path | None) -> None:
    """Refuse a run whose ``output_dir`` holds checkpoints past the point it starts from (a fresh
    start, or ``resume=`` an older checkpoint): its own checkpoints would mix with that other run's,
    and ``resume=latest`` would later continue the other one."""
    start = read_checkpoint_state(resumed_from)["step"] if resumed_from is not None else 0
    newer = [path for path in list_checkpoints(output_dir) if checkpoint_step(path) > start]
    if newer:
        how = f"resumes from step {start}" if resumed_from is not None else "starts fresh (resume='')"
        raise UserInputError(f"output_dir {output_dir} holds checkpoints of another run up to {newer[-1].name}, and this "
                             f"run {how}: continue that run (resume=latest) or give a new output_dir")


def resolve_resume(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """``""`` -> None (fresh start); ``"latest"`` -> newest checkpoint or None; else that path."""
    if not resume:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir():
        raise UserInputError(f"checkpoint to resume from not found: {path}")
    return path


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint; a missing or corrupt part is a clear error."""
    state_file = path / STATE_FILE
    for needed in (state_file, path / "optimizer.safetensors", path / "unet"):
        if not needed.exists():
            raise UserInputError(f"checkpoint {path} is incomplete or corrupt: {needed.name} is missing")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"checkpoint {path} is corrupt: {state_file.name}: {err}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise UserInputError(f"checkpoint {path} is corrupt: {state_file.name} holds no step")
    return state


def check_checkpoint_files(path: Path, state: dict[str, Any]) -> None:
    """A one-line error naming the first file of checkpoint ``path`` whose SHA-256 differs from the one its
    ``trainer_state.json`` (``state``) records: a bit flipped in a weight or an optimizer moment still
    parsed, and the run resumed from it silently. Checkpoints saved before the digests were recorded are
    not checked. A missing file is left to the checks that say what it held."""
    if "files" not in state:
        return
    problem = digest_problem(path, state["files"], STATE_FILE, missing_ok=True)
    if problem:
        raise UserInputError(f"checkpoint {path} is corrupt: {problem[0]}: {problem[1]}")


def load_unet_weights(unet: torch.nn.Module, path: Path) -> None:
    """Load ``path/unet`` safetensors weights into an existing UNet (strict)."""
    from safetensors.torch import load_file

    files = sorted((path / "unet").glob("*.safetensors"))
    if not files:
        raise UserInputError(f"checkpoint {path} is corrupt: no unet/*.safetensors")
    state = {}
    try:
        for file in files:
            state.update(load_file(str(file)))
    except Exception as err:  # safetensors raises SafetensorError on a damaged file
        raise UserInputError(f"checkpoint {path} is corrupt: {file.name}: {str(err).splitlines()[0]}") from None
    # a UNet carrying a Temp-LoRA names its wrapped weights '...base_layer.weight'
    current = unet.state_dict()
    own = {name.replace(".base_layer.", "."): name for name in current if "lora_" not in name}
    state = {own.get(key, key): value for key, value in state.items()}
    shapes = {name: tuple(value.shape) for name, value in current.items()}
    for name, value in state.items():
        if name in shapes and tuple(value.shape) != shapes[name]:
            raise UserInputError(f"checkpoint {path} does not fit this model: weight {name} has shape "
                                 f"{tuple(value.shape)} in the checkpoint, {shapes[name]} in the model")
    missing, unexpected = unet.load_state_dict(state, strict=False)
    missing = [name for name in missing if "lora_" not in name]
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise UserInputError(f"checkpoint {path} does not fit this model: {'missing' if missing else 'unexpected'} weight {name}")


def load_module_weights(module: torch.nn.Module, path: Path, name: str) -> None:
    """Load ``path/name`` safetensors weights (a ``save_pretrained`` directory) into ``module`` (strict)."""
    from safetensors.torch import load_file

    files = sorted((path / name).glob("*.safetensors"))
    if not files:
        raise UserInputError(f"checkpoint {path} does not fit this model: no {name}/*.safetensors")
    try:
        state = {key: value for file in files for key, value in load_file(str(file)).items()}
        module.load_state_dict(state, strict=True)
    except Exception as err:
        raise UserInputError(f"checkpoint {path} is corrupt or does not fit: {name}: {str(err).splitlines()[0]}") from None
