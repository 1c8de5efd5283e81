"""OpenVINO models on this process's CPUs, as the OCR sessions (tools/corpus/text.py) and the text embedders
(tools/retrieval/embedders.py) both run them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def compile_for_cpu(path: str | Path, threads: int | None = None, **config: Any):
    """The model at `path` (OpenVINO IR or ONNX) compiled for the CPU, latency-bound, on `threads` threads: by
    default the CPUs this process may run on, which can be fewer than the machine's (an affinity mask, a
    container's cpuset). `config` adds OpenVINO properties."""
    import openvino

    threads = threads or len(os.sched_getaffinity(0))
    return openvino.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_NUM_THREADS": threads, **config})


def infer(compiled, inputs: Any, output: Any = 0) -> np.ndarray:
    """One output of one inference, copied out of a request made for this call: one compiled model serves several
    threads at once (the ingest worker, searches, API uploads), and a request is not safe to share between them."""
    request = compiled.create_infer_request()
    request.infer(inputs)
    return request.get_tensor(compiled.output(output) if isinstance(output, int) else output).data.copy()
