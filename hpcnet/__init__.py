"""hpcnet: DistBelief-style distributed neural-network training as one MPI program.

See docs/design.md for the architecture: ranks take roles (replicas, parameter
shards, a coordinator), all parameters live in one flat float32 vector, and the
training data lives in sharded HDF5 files.
"""

__version__ = "0.1.0"
