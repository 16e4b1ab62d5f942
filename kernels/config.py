"""Compile flags every kernel here shares (none sets its own).

FASTMATH lets LLVM reassociate sums (so a reduction over contiguous memory is vectorized), fuse
multiply-adds and ignore the sign of zero; NaN and infinity keep their IEEE meaning.
ERROR_MODEL "numpy": a float division by zero gives inf/NaN as in NumPy instead of raising, which
drops the per-element check that kept a loop with a division from being vectorized (7x slower here).
"""
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
ERROR_MODEL = "numpy"
