"""The Torch model family: CNN -> BiLSTM -> GRU -> masked attention over per-frame features.

Modules: ``data`` (scaler, padding, modality fill), ``model`` (TimeSeriesNet, safe weight
loading), ``train`` (per-fold training with epoch-level resume), ``predict`` (probabilities).
"""
