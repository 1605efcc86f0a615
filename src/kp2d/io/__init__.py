"""Bytes in and out, below the models: images, checkpoint files, shipped weight names, atomic writes.

Nothing here builds a network; :mod:`kp2d.models` reads checkpoints through this package.
"""
