"""Run Triton kernels in its CPU interpreter: must be set before triton is first imported."""

import os

os.environ["TRITON_INTERPRET"] = "1"
