"""Why a trained model decides what it decides, and how easily it is fooled.

- :mod:`~crossframe.explain.permutation`: permutation importance, through ``predict`` only (any backend);
- :mod:`~crossframe.explain.gradients`: saliency and integrated gradients, on
  :meth:`crossframe.backend.Backend.input_gradients`;
- :mod:`~crossframe.explain.attacks`: FGSM and PGD accuracy under an L-infinity budget;
- :mod:`~crossframe.explain.report`: the PNG and self-contained HTML report of ``crossframe explain``.
"""
