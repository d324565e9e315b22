"""Session-wide test setup.

Triton kernels run in Triton's CPU interpreter. The variable must be set before triton is
first imported, and torch imports it early (torch.compile probes for it), so it is set here,
in the root conftest, which pytest imports before collecting any test module.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
