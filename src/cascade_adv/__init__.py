"""cascade-adv: adversarial training and robustness evaluation of image classifiers.

Implements the methods of Kurakin, Goodfellow & Bengio, "Adversarial Machine
Learning at Scale" (ICLR 2017) and Na, Ko & Mukhopadhyay, "Cascade Adversarial
Machine Learning Regularized with a Unified Embedding" (ICLR 2018).

Sub-packages (each importable on its own): ``data``, ``models``, ``attacks``,
``training``, ``evaluation``, ``analysis``, ``reporting``, ``experiments``, ``cli``.
"""

__version__ = "0.1.0"

from cascade_adv.errors import CascadeAdvError

__all__ = ["CascadeAdvError", "__version__"]
