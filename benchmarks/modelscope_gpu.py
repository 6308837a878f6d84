"""ModelScope-size chunk benchmark: seconds, peak memory and UNet MFU per 16-frame chunk.

    python benchmarks/modelscope_gpu.py --device cuda --compile          # H100: full size, < 5 min
    python benchmarks/modelscope_gpu.py --size tiny --device cpu --chunks 2   # smoke test, seconds

The UNet is diffusers' ``UNet3DConditionModel`` in the real ModelScope text-to-video 1.7b
config (1.41 B parameters) with random weights from ``--seed``; the text conditioning is random
``(1, 77, 1024)`` states, so no text encoder or VAE is loaded and neither is timed. Each mode
generates ``--chunks`` chunks of ``--frames`` new latent frames (16 at 32x32 = 256x256 pixels)
with ``--steps`` DDIM steps (50) and classifier-free guidance (the UNet runs on a batch of 2):

* ``reference`` — the denoising loop of diffusers' ``TextToVideoSDPipeline.__call__`` (steps 5
  and 7 of it, copied line for line): ``cat([latents] * 2)``, UNet, guidance, DDIM ``step`` on
  ``(b*f, c, h, w)``; fp16, eager, the default (SDPA) attention processor. No context frames.
* ``project`` — this project's sampler, :func:`slowfast_vgen.sampler.sample_chunk`, exactly as
  :class:`~slowfast_vgen.session.GenerationSession` calls it: the previous chunk's last
  ``--context-frames`` clean latents (8) are re-imposed in front of the noisy new frames at every
  step, so the UNet sees ``f_p + f_g = 24`` frames. bf16, SDPA, and with ``--compile``
  ``torch.compile`` in ``--compile-mode`` (``reduce-overhead`` = CUDA graphs; on a CPU the
  ``default`` mode). The first chunk's context is random clean latents of full length, so every
  chunk has one shape and the warm-up chunk compiles the graph every later chunk replays.
* ``project_temp_lora`` — the same plus the fast learner, :class:`slowfast_vgen.fast_learner.TempLoRA`
  with the project's default settings (paper rule Eq. 3, rank 32 on the 136 temporal-attention
  projections, Adam 1e-4, one step per chunk), updated on (context ⊕ new chunk) after every chunk.
  Sampling runs the compiled UNet (the LoRA is injected before compiling); the update runs eager.

No :class:`~slowfast_vgen.model.ModelBundle` is built (it would add a 340 M text encoder and an
84 M VAE that no mode times): the benchmark calls the same functions the session does on the
UNet, the DDIM scheduler from :func:`~slowfast_vgen.sampler.make_scheduler` and the ModelScope
noise schedule.

Per chunk it records wall seconds (``torch.cuda.synchronize`` around each phase) and peak memory
(CUDA allocator peak, with only that mode's UNet alive; on a CPU the process RSS high-water mark,
which also holds what earlier modes left behind). The first ``--warmup`` chunk(s) (compilation,
CUDA-graph capture, cuDNN autotuning) are kept in the records and left out of the means. UNet
FLOPs are counted once per mode with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (about 305 GFLOP per frame per guidance branch at 32x32); MFU = counted FLOPs per chunk /
mean seconds per chunk / ``--peak-tflops`` (989 = H100 bf16 dense). ``--max-seconds`` bounds the
whole run: each mode gets an equal share of what is left and stops adding chunks (after its
warm-up and one measured chunk) when the next would overrun it; compilation, inside a warm-up
chunk, is not bounded by it (``warmup_seconds`` in the JSON shows what it cost).

Results: ``<--out>/<--name>.json`` (default ``benchmarks/results/modelscope_<device>_<size>.json``).
Goal on one H100: project <= 0.8 x the reference's seconds per chunk and >= 45 % MFU. The
project's chunk runs 1.5 x the reference's UNet FLOPs (24 frames against 16); the summary also
gives the ratio per FLOP, and ``--context-frames 0`` measures the like-for-like 16-frame case.

On a GPU machine without diffusers/omegaconf, carry the wheels of ``bash train/gpu_wheels.sh``
(``.whl/``), install them with ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``
and run with ``PYTHONPATH=/tmp/site:.``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import peft
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet3DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from slowfast_vgen.errors import UserInputError, run_cli
from slowfast_vgen.fast_learner import FastLearnerConfig, TempLoRA
from slowfast_vgen.io_utils import atomic_write_json, result_path
from slowfast_vgen.profiling import Stopwatch, peak_memory_mb, reset_peak_memory
from slowfast_vgen.sampler import make_scheduler, sample_chunk

MODES = ("reference", "project", "project_temp_lora")
RESULTS_DIR = Path(__file__).parent / "results"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# ModelScope text-to-video 1.7b: unet/config.json and scheduler/scheduler_config.json
MODELSCOPE_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=64,
    cross_attention_dim=1024,
    norm_num_groups=32,
)
MODELSCOPE_SCHEDULE = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="epsilon", clip_sample=False, steps_offset=1,
)
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
    norm_num_groups=8,
)


@dataclass
class Preset:
    """A UNet config and the chunk geometry measured with it."""

    unet: dict
    latent_size: int  # h = w of the latents
    frames: int  # f_g: new frames per chunk
    steps: int  # DDIM steps per chunk
    text_tokens: int  # length of the random text states; their width is cross_attention_dim
    schedule: dict = field(default_factory=lambda: dict(MODELSCOPE_SCHEDULE))


PRESETS = {
    "modelscope": Preset(unet=MODELSCOPE_UNET, latent_size=32, frames=16, steps=50, text_tokens=77),
    "tiny": Preset(unet=TINY_UNET, latent_size=8, frames=4, steps=2, text_tokens=8),
}


@dataclass
class ChunkCost:
    """What one chunk of one mode cost."""

    index: int
    warmup: bool
    seconds: float  # sampling + memory update
    sampling_seconds: float
    update_seconds: float
    peak_memory_mb: float | None
    temp_lora_loss: float | None = None


# ---------------------------------------------------------------------------------- building
def build_unet(preset: Preset, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> UNet3DConditionModel:
    """The preset's UNet with random weights (deterministic per seed and device); on ``meta`` it holds no memory."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
        unet = UNet3DConditionModel(**preset.unet)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    return unet.eval().requires_grad_(False)


def noise_scheduler(preset: Preset) -> DDPMScheduler:
    """The training noise schedule (what ``ModelBundle.noise_scheduler`` holds): Temp-LoRA's ``add_noise``."""
    return DDPMScheduler(**preset.schedule)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def unet_forward_flops(preset: Preset, batch: int, frames: int) -> int:
    """FLOPs of one UNet forward on ``(batch, C, frames, h, w)``, counted on the meta device."""
    unet = build_unet(preset, "meta")
    sample = torch.empty(batch, preset.unet["in_channels"], frames, preset.latent_size, preset.latent_size, device="meta")
    states = torch.empty(batch, preset.text_tokens, preset.unet["cross_attention_dim"], device="meta")
    with torch.no_grad():
        return count_flops(lambda: unet(sample, torch.tensor(999, device="meta"), encoder_hidden_states=states))


def temp_lora_update_flops(preset: Preset, num_context: int, num_frames: int) -> int:
    """FLOPs of one Temp-LoRA gradient step (forward + backward of the loss), counted on the meta device."""
    unet = build_unet(preset, "meta")
    fast = TempLoRA(unet, noise_scheduler(preset), FastLearnerConfig())
    shape = (1, preset.unet["in_channels"], num_context, preset.latent_size, preset.latent_size)
    previous = torch.empty(shape, device="meta")
    new = torch.empty(shape[:2] + (num_frames,) + shape[3:], device="meta")
    uncond = torch.empty(1, preset.text_tokens, preset.unet["cross_attention_dim"], device="meta")
    generator = torch.Generator().manual_seed(0)
    return count_flops(lambda: fast.loss(previous, new, generator, uncond).backward()) * fast.config.steps_per_chunk


# ---------------------------------------------------------------------------------- the loops
@torch.no_grad()
def reference_chunk(unet, scheduler: DDIMScheduler, prompt_embeds: torch.Tensor, shape: tuple, steps: int,
                    guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One chunk denoised as diffusers' ``TextToVideoSDPipeline.__call__`` does (its steps 4, 5 and 7).

    ``prompt_embeds`` is ``cat([negative, positive])``, ``(2, L, D)``; returns ``(1, C, f, h, w)``.
    """
    device, dtype = prompt_embeds.device, prompt_embeds.dtype
    # 4. timesteps
    scheduler.set_timesteps(steps, device=device)
    # 5. latents: randn_tensor on the generator's device, scaled by init_noise_sigma
    latents = torch.randn(shape, generator=generator, device="cpu", dtype=dtype).to(device)
    latents = latents * scheduler.init_noise_sigma
    # 7. denoising loop
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents] * 2)  # (2, C, f, h, w)
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        bsz, channel, frames, width, height = latents.shape
        latents = latents.permute(0, 2, 1, 3, 4).reshape(bsz * frames, channel, width, height)  # (b*f, c, h, w)
        noise_pred = noise_pred.permute(0, 2, 1, 3, 4).reshape(bsz * frames, channel, width, height)
        latents = scheduler.step(noise_pred, t, latents, eta=0.0, generator=generator).prev_sample
        latents = latents[None, :].reshape(bsz, frames, channel, width, height).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
    return latents


@dataclass
class BenchConfig:
    """One run's settings (what the JSON's ``config`` records)."""

    size: str
    device: str
    chunks: int
    warmup: int
    frames: int
    context_frames: int
    steps: int
    guidance_scale: float
    dtype: str
    reference_dtype: str
    compile: bool
    compile_mode: str | None
    seed: int
    max_seconds: float


def run_mode(mode: str, preset: Preset, config: BenchConfig, seconds_left: float) -> list[ChunkCost]:
    """Generate ``config.chunks`` chunks in ``mode``; stop early (after warm-up + 1) past ``seconds_left``."""
    device = torch.device(config.device)
    reference = mode == "reference"
    dtype = DTYPES[config.reference_dtype if reference else config.dtype]
    deadline = time.perf_counter() + seconds_left
    generator = torch.Generator().manual_seed(config.seed)
    channels, size = preset.unet["in_channels"], preset.latent_size
    text_shape = (1, preset.text_tokens, preset.unet["cross_attention_dim"])

    # 1. the UNet (only this mode's is alive), random text states, the schedulers
    unet = build_unet(preset, device, dtype, config.seed)
    text = torch.randn(text_shape, generator=generator).to(device, dtype)  # (1, L, D)
    uncond = torch.randn(text_shape, generator=generator).to(device, dtype)
    fast = None
    if mode == "project_temp_lora":  # inject before compiling, so the compiled graph holds the LoRA
        fast = TempLoRA(unet, noise_scheduler(preset), FastLearnerConfig())
    denoiser, callback = unet, None
    if config.compile and not reference:
        denoiser = torch.compile(unet, mode=config.compile_mode, dynamic=False)
        if config.compile_mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs: a new step per UNet call
            def callback(*_):
                torch.compiler.cudagraph_mark_step_begin()
    context = torch.randn(1, channels, config.context_frames, size, size, generator=generator).to(device, dtype)

    # 2. the chunks: denoise (timed), then the memory update (timed)
    records: list[ChunkCost] = []
    for index in range(config.chunks):
        if records and index > config.warmup and time.perf_counter() + records[-1].seconds > deadline:
            break
        reset_peak_memory(device)
        with Stopwatch(device) as sampling:
            if reference:
                new = reference_chunk(unet, DDIMScheduler(**preset.schedule, set_alpha_to_one=False),
                                      torch.cat([uncond, text]), (1, channels, config.frames, size, size),
                                      config.steps, config.guidance_scale, generator)
            else:
                if callback is not None:
                    callback()
                scheduler = make_scheduler("ddim", noise_scheduler(preset).config)
                new = sample_chunk(denoiser, scheduler, context, text, uncond, num_frames=config.frames,
                                   num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                                   generator=generator, callback=callback)  # (1, C, f_g, h, w)
        loss, update_seconds = None, 0.0
        if fast is not None:
            with Stopwatch(device) as update:
                loss = fast.update(context, new, generator, uncond)  # Eq. 3 on (context ⊕ new)
            update_seconds = update.seconds
        if not reference and config.context_frames:  # the next chunk's context: the last f_p clean frames
            context = torch.cat([context, new], dim=2)[:, :, -config.context_frames:]
        records.append(ChunkCost(
            index=index, warmup=index < config.warmup, seconds=sampling.seconds + update_seconds,
            sampling_seconds=sampling.seconds, update_seconds=update_seconds,
            peak_memory_mb=peak_memory_mb(device), temp_lora_loss=loss,
        ))
        print(f"{mode:>17} chunk {index}: {records[-1].seconds:.3f} s"
              + (f", peak {records[-1].peak_memory_mb:.0f} MB" if records[-1].peak_memory_mb else ""), flush=True)

    # 3. free this mode's UNet (and compiled graphs) before the next mode
    del unet, denoiser, fast
    if config.compile:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def summarise(records: list[ChunkCost], flops_per_chunk: int, peak_tflops: float) -> dict:
    measured = [r for r in records if not r.warmup] or records
    seconds = statistics.mean(r.seconds for r in measured)
    memory = [r.peak_memory_mb for r in measured if r.peak_memory_mb is not None]
    achieved = flops_per_chunk / seconds
    return {
        "measured_chunks": len(measured),
        "seconds_per_chunk": seconds,
        "sampling_seconds_per_chunk": statistics.mean(r.sampling_seconds for r in measured),
        "update_seconds_per_chunk": statistics.mean(r.update_seconds for r in measured),
        "warmup_seconds": sum(r.seconds for r in records if r.warmup),
        "peak_memory_mb": max(memory) if memory else None,
        "flops_per_chunk": flops_per_chunk,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak_tflops * 1e12),
    }


# ---------------------------------------------------------------------------------- entry point
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="modelscope", help="UNet preset (default modelscope)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda | cpu")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--chunks", type=int, default=5, help="chunks per mode, warm-up included (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="chunks left out of the means (default 1)")
    parser.add_argument("--frames", type=int, help="new latent frames per chunk (default: the preset's, 16)")
    parser.add_argument("--context-frames", type=int, default=8, help="f_p clean context frames of the project modes (default 8)")
    parser.add_argument("--steps", type=int, help="DDIM steps per chunk (default: the preset's, 50)")
    parser.add_argument("--guidance-scale", type=float, default=9.0, help="CFG scale, > 1 (pipeline default 9)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="project modes (default bfloat16)")
    parser.add_argument("--reference-dtype", choices=sorted(DTYPES), default="float16", help="reference (default float16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the project modes' UNet")
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode (default reduce-overhead = CUDA graphs; 'default' on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak FLOP/s for MFU (H100 bf16 dense: 989)")
    parser.add_argument("--max-seconds", type=float, default=270.0, help="time budget of the whole run (default 270)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights, states and noise")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results directory (default benchmarks/results)")
    parser.add_argument("--name", help="result file name without .json (default modelscope_<device>_<size>)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    preset = PRESETS[args.size]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UserInputError(f"--modes must name some of {', '.join(MODES)}, got {args.modes!r}")
    if args.chunks < args.warmup + 1 or args.warmup < 0:
        raise UserInputError(f"--chunks must exceed --warmup >= 0, got {args.chunks} and {args.warmup}")
    if args.guidance_scale <= 1.0:
        raise UserInputError(f"--guidance-scale must be > 1 (both loops use guidance), got {args.guidance_scale}")
    if args.context_frames < 0:
        raise UserInputError(f"--context-frames must be >= 0, got {args.context_frames}")
    for flag, value in (("--steps", args.steps), ("--frames", args.frames)):  # None: the preset's
        if value is not None and value < 1:  # --steps -1 recorded negative FLOPs; 0 ran the preset's silently
            raise UserInputError(f"{flag} must be >= 1, got {value}")
    if not 0 < args.peak_tflops < float("inf"):
        raise UserInputError(f"--peak-tflops must be a finite number > 0, got {args.peak_tflops}")
    if not 0 < args.max_seconds < float("inf"):
        raise UserInputError(f"--max-seconds must be a finite number > 0, got {args.max_seconds}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("--device cuda but torch sees no CUDA device")
    compile_mode = None
    if args.compile:
        compile_mode = args.compile_mode if args.device.startswith("cuda") else "default"
    config = BenchConfig(
        size=args.size, device=args.device, chunks=args.chunks, warmup=args.warmup,
        frames=preset.frames if args.frames is None else args.frames, context_frames=args.context_frames,
        steps=preset.steps if args.steps is None else args.steps,
        guidance_scale=args.guidance_scale, dtype=args.dtype, reference_dtype=args.reference_dtype,
        compile=args.compile, compile_mode=compile_mode, seed=args.seed, max_seconds=args.max_seconds,
    )
    diffusers.utils.logging.set_verbosity_error()  # quiet "cast with to()" on the random UNet
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # all modes: cuDNN picks its fastest convolutions in the warm-up
    out = result_path(args.out, args.name or f"modelscope_{device.type}_{args.size}")  # before anything is measured

    # 1. FLOPs per chunk, counted on the meta device: guidance runs the UNet on a batch of 2
    unet_frames = {"reference": config.frames, "project": config.context_frames + config.frames}
    unet_frames["project_temp_lora"] = unet_frames["project"]
    forward_flops = {m: unet_forward_flops(preset, 2, unet_frames[m]) for m in modes}
    update_flops = temp_lora_update_flops(preset, config.context_frames, config.frames) if "project_temp_lora" in modes else 0
    parameters = sum(p.numel() for p in build_unet(preset, "meta").parameters())

    # 2. each mode in turn, sharing what is left of the time budget
    results = {
        "command": "python benchmarks/modelscope_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
        "torch_threads": torch.get_num_threads(),
        "peak_tflops": args.peak_tflops,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "config": asdict(config),
        "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.unet.items()},
        "unet_parameters": parameters,
        "latent_shape": [preset.unet["in_channels"], config.frames, preset.latent_size, preset.latent_size],
        "temp_lora": asdict(FastLearnerConfig()),
        "modes": {},
    }
    for position, mode in enumerate(modes):
        seconds_left = max(0.0, config.max_seconds - (time.perf_counter() - started)) / (len(modes) - position)
        records = run_mode(mode, preset, config, seconds_left)
        flops_per_chunk = config.steps * forward_flops[mode] + (update_flops if mode == "project_temp_lora" else 0)
        results["modes"][mode] = {
            "unet_frames": unet_frames[mode],
            "unet_batch": 2,
            "unet_forward_flops": forward_flops[mode],
            "gflop_per_frame_per_branch": forward_flops[mode] / (2 * unet_frames[mode]) / 1e9,
            "temp_lora_update_flops": update_flops if mode == "project_temp_lora" else 0,
            "dtype": config.reference_dtype if mode == "reference" else config.dtype,
            "compiled": config.compile and mode != "reference",
            "truncated": len(records) < config.chunks,
            **summarise(records, flops_per_chunk, args.peak_tflops),
            "per_chunk": [asdict(r) for r in records],
        }

    # 3. ratios and the goal
    summary, got = {}, results["modes"]
    if "reference" in got and "project" in got:
        summary["project_over_reference_time"] = got["project"]["seconds_per_chunk"] / got["reference"]["seconds_per_chunk"]
        summary["project_over_reference_flops"] = got["project"]["flops_per_chunk"] / got["reference"]["flops_per_chunk"]
        summary["project_over_reference_time_per_flop"] = (
            summary["project_over_reference_time"] / summary["project_over_reference_flops"])
    if "project" in got and "project_temp_lora" in got:
        summary["temp_lora_time_ratio"] = got["project_temp_lora"]["seconds_per_chunk"] / got["project"]["seconds_per_chunk"]
        if got["project"]["peak_memory_mb"] and got["project_temp_lora"]["peak_memory_mb"]:
            summary["temp_lora_memory_ratio"] = got["project_temp_lora"]["peak_memory_mb"] / got["project"]["peak_memory_mb"]
    if "project" in got:
        summary["project_mfu"] = got["project"]["mfu"]
    if "project_over_reference_time" in summary:
        summary["goal"] = {"time_ratio_max": 0.8, "mfu_min": 0.45,
                           "met": summary["project_over_reference_time"] <= 0.8 and summary["project_mfu"] >= 0.45}
    summary["total_seconds"] = time.perf_counter() - started
    results["summary"] = summary

    for mode, got_mode in got.items():
        memory = got_mode["peak_memory_mb"]
        print(f"{mode:>17}: {got_mode['seconds_per_chunk']:.3f} s/chunk over {got_mode['measured_chunks']}, "
              f"peak {memory:.0f} MB, {got_mode['achieved_tflops']:.2f} TFLOP/s, MFU {100 * got_mode['mfu']:.1f} %"
              if memory is not None else f"{mode:>17}: {got_mode['seconds_per_chunk']:.3f} s/chunk")
    print(", ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float)))
    atomic_write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
