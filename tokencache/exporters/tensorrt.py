"""TensorRT engines for every variant of a bundle, built through polygraphy's Python API.

The part that decides the builder settings (`builder_settings`) is plain Python and tested without
TensorRT; building needs `import tensorrt` and an NVIDIA GPU, and says so clearly when either is
missing. Engines are written next to the ONNX files and recorded in the manifest.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .manifest import load_manifest, sha256, write_manifest

PRECISIONS = ("fp32", "fp16", "bf16")


class TensorRTUnavailable(RuntimeError):
    pass


def tensorrt_missing() -> str | None:
    """Why engines cannot be built or run here, or None when TensorRT and a GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:          # ImportError, or a stub wheel that fails on import
        return f"TensorRT is not installed or does not import ({type(e).__name__}: {e}); pip install tensorrt on a machine with an NVIDIA GPU"
    import torch
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU; torch.cuda.is_available() is False"
    return None


def builder_settings(precision: str = "fp16", timing_cache: str | Path | None = None,
                     optimization_level: int = 3) -> dict:
    """Keyword arguments for polygraphy's CreateConfig. Shapes are static in the ONNX files, so no
    optimisation profiles are needed; fp16/bf16 also allow fp32 fallback per layer (TensorRT's
    default), which keeps the int64 index math of gather/scatter exact."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not isinstance(optimization_level, int) or not 0 <= optimization_level <= 5:
        raise ValueError(f"builder optimisation level must be an integer in 0..5, got {optimization_level!r}")
    settings = {"fp16": precision == "fp16", "bf16": precision == "bf16", "tf32": precision != "fp32",
                "builder_optimization_level": optimization_level}
    if timing_cache is not None:
        settings["load_timing_cache"] = str(timing_cache)
    return settings


def engine_jobs(bundle: str | Path, timing_cache: str | Path | None = None) -> tuple[list[tuple], Path]:
    """(variant, ONNX path, plan path) per variant of a validated bundle, and the timing cache path
    (default `<bundle>/timing.cache`). Plain Python: no TensorRT needed."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    jobs = [(name, bundle / v["file"], bundle / f"{name}.plan") for name, v in manifest["variants"].items()]
    return jobs, Path(timing_cache) if timing_cache else bundle / "timing.cache"


def build_engines(bundle: str | Path, precision: str = "fp16", timing_cache: str | Path | None = None,
                  optimization_level: int = 3, progress: bool = True) -> dict:
    """Build `<variant>.plan` for every variant and record them in manifest.json."""
    builder_settings(precision, None, optimization_level)      # bad flags fail first, TensorRT or not
    reason = tensorrt_missing()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    jobs, cache = engine_jobs(bundle, timing_cache)
    for name, onnx_path, plan in tqdm(jobs, desc="building engines", disable=not progress):
        build_engine(onnx_path, plan, precision, cache, optimization_level)
        manifest["variants"][name]["engine"] = {
            "file": plan.name, "sha256": sha256(plan), "precision": precision,
            "optimization_level": optimization_level, "tensorrt_version": tensorrt.__version__}
    write_manifest(bundle, manifest)
    return manifest


def build_engine(onnx_path: Path, plan: Path, precision: str = "fp16", timing_cache: Path | None = None,
                 optimization_level: int = 3) -> Path:
    """One ONNX file -> one serialised engine at `plan` (needs TensorRT and a GPU). The timing cache
    is read if it exists and written back: variants share most layers, so later builds reuse the
    timings of earlier ones."""
    reason = tensorrt_missing()
    if reason:
        raise TensorRTUnavailable(reason)
    from polygraphy.backend.trt import CreateConfig, engine_from_network, network_from_onnx_path, save_engine

    settings = builder_settings(precision, timing_cache if timing_cache and Path(timing_cache).exists() else None,
                                optimization_level)
    network = network_from_onnx_path(str(onnx_path))
    engine = engine_from_network(network, config=CreateConfig(**settings),
                                 save_timing_cache=str(timing_cache) if timing_cache else None)
    save_engine(engine, str(plan))
    return Path(plan)
