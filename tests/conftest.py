"""Test-wide settings: one compute thread per test process.

On a small shared machine idle torch threads spin-wait and fight loader workers and other processes for the
cores; one thread keeps every test's time steady. Nothing here changes what a test checks.
"""

import torch

torch.set_num_threads(1)
