"""The update rules, one file each, and the registry the optimizers and tests read.

Adding a rule: a file here with its :class:`~fastopt.kernels.rule.Rule` declarations (state,
group columns, scalars, per-element source, float64 reference) in a ``RULES`` tuple, and its
module in the line below.
"""

from . import adafactor, adagrad, adam, adamax, lamb, lion, muon, nadam, radam, rmsprop, sgd

#: Every rule by name (``"adam_step"``, ...).
RULES = {rule.name: rule for module in (sgd, adam, rmsprop, adagrad, adamax, nadam, radam, lion, lamb, muon, adafactor)
         for rule in module.RULES}
