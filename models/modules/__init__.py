"""Shared building blocks (2D and 3D from one code path via ``spatial_dims``)."""
