"""The Torch model family: CNN -> BiLSTM -> GRU -> masked attention over per-frame features.

Modules, in the order a fold flows through them:
``runtime`` (device, threads, DDP, seeding, RNG snapshots); ``data`` (scaler, padding, the
IMU-only view of padded inputs); ``fold_data`` (one outer fold split into training part,
inner validation fold and scored fold); ``members`` (a fold's models: seeds, full input or
IMU-only); ``model`` (TimeSeriesNet, optional orientation head, weight files); ``augment``
(time warp, IMU-frame rotation, mixup) and ``batches`` (an epoch's batches and losses);
``train`` (one member's epochs with resume and the epoch choice); ``views`` (predictions in
the two views, member averages, OOF rows); ``checkpoint`` (member payloads on
``cmi.checkpoint``'s store); ``cv`` (the fold loop, ``run_torch_cv``); ``curves`` (dvclive
curves); ``outputs`` (weights, meta.json, OOF table, metrics); ``predict`` (probabilities,
loading a member for inference).
"""
