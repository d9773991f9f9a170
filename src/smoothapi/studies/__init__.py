"""The studies: the paper's experiments end to end, each resumable stage by stage.

- :mod:`~smoothapi.studies.fashion_mnist`: the paper's study on Fashion-MNIST (digits
  for tests, CIFAR-10 at the paper's scale): ``smoothapi experiment fashion-mnist``;
- :mod:`~smoothapi.studies.natural_photos`: the vision-API setting on natural photos
  with ImageNet classifiers (``smoothapi experiment natural-photos``), and
  :mod:`~smoothapi.studies.photo_levers`, the levers it tries;
- :mod:`~smoothapi.studies.photo_mse`: the noise-level-aware photo MSE denoiser,
  trained for hours (``smoothapi experiment photo-mse``);
- :mod:`~smoothapi.studies.decisions`: pay once, ask many: six questions (decisions)
  certified offline from one paid run per denoiser setting through a loopback vision API
  (``smoothapi experiment decisions``).

Shared machinery: :mod:`~smoothapi.studies.stages` (stages that resume, their clocks),
:mod:`~smoothapi.studies.study` (the certification study and its report) and
:mod:`~smoothapi.studies.snapshots` (journals carried across machines).
"""
