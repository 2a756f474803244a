r"""Losses and costs.

A **loss** measures the error of one instance: every function here returns one value per
sample (shape ``(n,)``). A **cost** measures a group: :func:`cost` is the mean loss over the
batch plus the L2 penalty when weight decay is on, the number an optimizer decreases.

Each loss has a ``gradient(prediction, target)`` giving :math:`\partial L_i / \partial \hat y_i`
per sample (the shape of the prediction); :func:`cost_gradient` divides by the batch size, as
the gradient of the mean.

Multi-output losses average over the outputs of one sample (as ``torch.nn.MSELoss`` and friends
do over all elements), so ``mean_squared_error(p, t).mean()`` equals ``((p - t)**2).mean()``.
"""

import numpy as np

from .. import checks as _checks
from .arrays import namespace


def _pair(prediction, target):
    xp = namespace(prediction)
    prediction = xp.asarray(prediction)
    target = xp.asarray(target, dtype=prediction.dtype)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have one shape, got {prediction.shape} and {target.shape}")
    return prediction, target


def _per_sample(values):
    return values.reshape(values.shape[0], -1).mean(axis=1) if values.ndim > 1 else values


def _outputs(prediction):
    return 1 if prediction.ndim == 1 else int(np.prod(prediction.shape[1:]))


class Loss:
    """A per-instance loss: ``loss(prediction, target)`` -> ``(n,)``; ``loss.gradient(...)``."""

    name = "loss"

    def __call__(self, prediction, target):
        raise NotImplementedError

    def gradient(self, prediction, target):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    r""":math:`L_i = \frac1k \sum_j (\hat y_{ij} - y_{ij})^2`."""

    name = "mse"

    def __call__(self, prediction, target):
        prediction, target = _pair(prediction, target)
        return _per_sample((prediction - target) ** 2)

    def gradient(self, prediction, target):
        prediction, target = _pair(prediction, target)
        return (prediction - target) * prediction.dtype.type(2.0 / _outputs(prediction))


class MeanAbsoluteError(Loss):
    r""":math:`L_i = \frac1k \sum_j |\hat y_{ij} - y_{ij}|` (gradient 0 where they are equal)."""

    name = "mae"

    def __call__(self, prediction, target):
        prediction, target = _pair(prediction, target)
        return _per_sample(abs(prediction - target))

    def gradient(self, prediction, target):
        prediction, target = _pair(prediction, target)
        return namespace(prediction).sign(prediction - target) * prediction.dtype.type(1.0 / _outputs(prediction))


class Huber(Loss):
    r"""Quadratic within ``delta`` of the target, linear beyond (``torch.nn.HuberLoss``)."""

    name = "huber"

    def __init__(self, delta=1.0):
        self.delta = _checks.positive("delta", delta)

    def __call__(self, prediction, target):
        prediction, target = _pair(prediction, target)
        error = abs(prediction - target)
        quadratic = namespace(error).minimum(error, self.delta)
        return _per_sample(0.5 * quadratic**2 + self.delta * (error - quadratic))

    def gradient(self, prediction, target):
        prediction, target = _pair(prediction, target)
        scale = prediction.dtype.type(1.0 / _outputs(prediction))
        return (prediction - target).clip(-self.delta, self.delta).astype(prediction.dtype) * scale

    def __repr__(self):
        return f"Huber(delta={self.delta})"


class BinaryCrossEntropyWithLogits(Loss):
    r""":math:`L_i = \frac1k\sum_j \max(z,0) - z y + \log(1 + e^{-|z|})` from logits :math:`z`,
    stable for any :math:`z` (``torch.nn.BCEWithLogitsLoss``)."""

    name = "bce"

    def __call__(self, logits, target):
        logits, target = _pair(logits, target)
        xp = namespace(logits)
        return _per_sample(xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-abs(logits))))

    def gradient(self, logits, target):
        logits, target = _pair(logits, target)
        return (_sigmoid(logits) - target) * logits.dtype.type(1.0 / _outputs(logits))


class SoftmaxCrossEntropy(Loss):
    r""":math:`L_i = \log\sum_c e^{z_{ic}} - z_{i y_i}` from logits ``(n, C)`` and integer labels
    ``(n,)``, computed with the maximum subtracted (``torch.nn.CrossEntropyLoss``)."""

    name = "cross_entropy"

    def _checked(self, logits, labels):
        xp = namespace(logits)
        logits = xp.asarray(logits)
        labels = xp.asarray(labels)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"logits must be (n, C) and labels (n,), got {logits.shape} and {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
        return logits, labels

    def __call__(self, logits, labels):
        logits, labels = self._checked(logits, labels)
        xp = namespace(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = xp.log(xp.exp(shifted).sum(axis=1))
        return log_norm - shifted[xp.arange(labels.size), labels]

    def gradient(self, logits, labels):
        logits, labels = self._checked(logits, labels)
        probabilities = softmax(logits)
        probabilities[namespace(logits).arange(labels.size), labels] -= 1
        return probabilities


def softmax(logits):
    """Row-wise softmax, with the maximum subtracted."""
    shifted = namespace(logits).exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _sigmoid(z):
    # exp of a non-positive number only: no overflow for any z
    xp = namespace(z)
    e = xp.exp(-abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def cost(loss, prediction, target, penalty=0.0):
    """The batch cost: the mean of ``loss`` over the batch, plus an L2 ``penalty`` (e.g.
    ``optimizer.l2_penalty()``)."""
    return float(loss(prediction, target).mean()) + float(penalty)


def cost_gradient(loss, prediction, target):
    """The gradient of the mean loss with respect to the prediction (the L2 term is fused into
    the optimizer step, not here)."""
    gradient = loss.gradient(prediction, target)
    return gradient / max(gradient.shape[0], 1)


LOSSES = {cls.name: cls for cls in (MeanSquaredError, MeanAbsoluteError, Huber,
                                    BinaryCrossEntropyWithLogits, SoftmaxCrossEntropy)}

mean_squared_error = MeanSquaredError()
mean_absolute_error = MeanAbsoluteError()
binary_cross_entropy_with_logits = BinaryCrossEntropyWithLogits()
softmax_cross_entropy = SoftmaxCrossEntropy()

__all__ = ["BinaryCrossEntropyWithLogits", "Huber", "Loss", "MeanAbsoluteError", "MeanSquaredError",
           "SoftmaxCrossEntropy", "binary_cross_entropy_with_logits", "cost", "cost_gradient",
           "mean_absolute_error", "mean_squared_error", "softmax", "softmax_cross_entropy"]
