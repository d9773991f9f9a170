"""Denoiser architectures (DnCNN, DnCNN-wide, MemNet) behind a registry.

Not yet implemented: until it is, pass any ``torch.nn.Module`` mapping
``(B, C, H, W)`` to the same shape as ``SmoothedClassifier(..., denoiser=...)``.
"""

__all__: list[str] = []
