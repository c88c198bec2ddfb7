"""Calibration: each layer's input statistics over a few batches (``calibrate``), and the
batch runner that calibration, distillation and pruning share (``_running``)."""
