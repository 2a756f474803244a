"""The model side: per-instance losses, dropout, the MLP and its array backends (NumPy, CuPy)."""
