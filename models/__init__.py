"""Machine learning for the node, free of DICOM and databases: plain arrays, slice axis 0.

Modules, one job each (see models/README.md):

- ``engine``: the ThroughPlaneEngine contract shared with the pipeline;
- ``aniso_unet``: the ANISO U-Net (Lin et al. 2019);
- ``profile`` + ``profiles/*.toml``: field-strength SNR profiles; ``simulate``: Algorithm 1;
- ``brains``, ``tissue``: the wheel-shipped brains and their tissue maps;
- ``augment``, ``patches``, ``train``: training; ``normalize``: the network's intensity scale;
- ``infer``: tiled whole-volume prediction; ``trust``: data-consistency score;
- ``baseline``: cubic B-spline; ``metrics``, ``evaluate``: held-out evaluation;
- ``release``: safetensors weights with sha256 manifest and model cards;
- ``iqt_engine``: ``IQTEngine``, the trained engines ``iqt-t1`` and ``iqt-mc`` (contrast-agnostic);
- ``contrast``: T1/T2/FLAIR/PD rendered from tissue maps (signal equations, relaxation times),
  and ``contrast.draw``: random-contrast heads for training ``iqt-mc``;
- ``inr``: ``INREngine``, the unsupervised per-case engine ``inr``.

Nothing is imported here so that ``import models.engine`` stays free of torch.
"""
