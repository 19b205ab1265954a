"""Speed of numbaopt against torch.optim, naive NumPy and a memory-bandwidth roofline.

``python -m pytest benchmarks --benchmark-only`` runs the pytest-benchmark suite;
``python -m benchmarks.report`` prints the interleaved ratio table for the README.
"""
