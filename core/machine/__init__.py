"""This computer and its peers: the BLAS and the native JIT the training process gets, the
device MLX computes on, free memory, external commands, and the hosts of a run launched
over several processes or machines (mlx.launch).

May import: the shared vocabulary at core/'s root. Imports no MLX model code.
"""
