"""The parts of ``numbaopt.distributed``, by concern (imported only through it, after mpi4py).

- ``control``: the small Allreduce that starts every collective call (which call, the
  options' digest, local errors, the has-grad flags), exit notices, the abort hook;
- ``agree``: what every rank must agree on (layout, class, options) and the messages;
- ``transport``: arena buffers meeting MPI, host or GPU (staged or CUDA-aware);
- ``shard``: ZeRO-1 slices, the local optimizer, state gathered and scattered;
- ``clip``: gradient clipping of the averaged gradients (the global norm over slices);
- ``files``: numbaopt.save / numbaopt.load of a DistributedOptimizer, one writer.
"""
