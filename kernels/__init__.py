"""Numba and Torch hot loops: plain functions over arrays and tensors, with no project imports."""
