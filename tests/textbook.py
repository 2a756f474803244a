"""PyTorch's documented update rules, transcribed independently of fastopt, in float64.

Each function takes per-element learning rates and weight decays (the groups already
expanded), the step count ``t`` (from 1) and a dict of state it fills in, and returns the new
parameters. The text follows the pseudo-code of the ``torch.optim`` documentation.
"""

import numpy as np


def sgd(config, p, g, state, t, lr, wd):
    if config.maximize:
        g = -g
    g = g + wd * p
    if config.momentum != 0:
        if t == 1:
            b = g.copy()
        else:
            b = config.momentum * state["b"] + (1 - config.dampening) * g
        state["b"] = b
        g = g + config.momentum * b if config.nesterov else b
    return p - lr * g


def _signed_and_decayed(config, p, g, lr, wd, decoupled):
    """``(p, g)`` after the sign (maximize) and the weight decay: decoupled (``p`` shrunk by
    ``1 - lr * wd``) or coupled (``wd * p`` added to ``g``)."""
    if config.maximize:
        g = -g
    if decoupled:
        return p * (1 - lr * wd), g
    return p, g + wd * p


def adam(config, p, g, state, t, lr, wd, *, decoupled=False):
    beta1, beta2 = config.betas
    p, g = _signed_and_decayed(config, p, g, lr, wd, decoupled)
    m = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    v = beta2 * state.get("v", 0.0) + (1 - beta2) * g**2
    state["m"], state["v"] = m, v
    if config.amsgrad:
        v = np.maximum(state.get("v_max", 0.0), v)
        state["v_max"] = v
    m_hat = m / (1 - beta1**t)
    return p - lr * m_hat / (np.sqrt(v) / np.sqrt(1 - beta2**t) + config.eps)


def adamw(config, p, g, state, t, lr, wd):
    return adam(config, p, g, state, t, lr, wd, decoupled=True)


def rmsprop(config, p, g, state, t, lr, wd):
    if config.maximize:
        g = -g
    g = g + wd * p
    v = config.alpha * state.get("v", 0.0) + (1 - config.alpha) * g**2
    state["v"] = v
    if config.centered:
        g_avg = config.alpha * state.get("g_avg", 0.0) + (1 - config.alpha) * g
        state["g_avg"] = g_avg
        v = v - g_avg**2
    denominator = np.sqrt(v) + config.eps
    if config.momentum > 0:
        b = config.momentum * state.get("b", 0.0) + g / denominator
        state["b"] = b
        return p - lr * b
    return p - lr * g / denominator


def adagrad(config, p, g, state, t, lr, wd):
    if config.maximize:
        g = -g
    g = g + wd * p
    clr = lr / (1 + (t - 1) * config.lr_decay)
    state["sum"] = state.get("sum", config.initial_accumulator_value) + g**2
    return p - clr * g / (np.sqrt(state["sum"]) + config.eps)


def adamax(config, p, g, state, t, lr, wd):
    beta1, beta2 = config.betas
    if config.maximize:
        g = -g
    g = g + wd * p
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    state["u"] = np.maximum(beta2 * state.get("u", 0.0), np.abs(g) + config.eps)
    return p - lr / (1 - beta1**t) * state["m"] / state["u"]


def radam(config, p, g, state, t, lr, wd):
    beta1, beta2 = config.betas
    p, g = _signed_and_decayed(config, p, g, lr, wd, config.decoupled_weight_decay)
    m = state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    v = state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t <= 5:
        return p - lr * m_hat
    l_t = np.sqrt(1 - beta2**t) / (np.sqrt(v) + config.eps)
    r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return p - lr * m_hat * l_t * r_t


def nadam(config, p, g, state, t, lr, wd):
    beta1, beta2 = config.betas
    p, g = _signed_and_decayed(config, p, g, lr, wd, config.decoupled_weight_decay)
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * config.momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * config.momentum_decay))
    mu_product = state["mu_product"] = state.get("mu_product", 1.0) * mu
    m = state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    v = state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g**2
    denom = np.sqrt(v / (1 - beta2**t)) + config.eps
    return p - lr * (1 - mu) / (1 - mu_product) * g / denom - lr * mu_next / (1 - mu_product * mu_next) * m / denom


def lion(config, p, g, state, t, lr, wd):
    """Chen et al. (2023), Program 1, with sign(0) = 0."""
    beta1, beta2 = config.betas
    if config.maximize:
        g = -g
    m = state.get("m", 0.0)
    update = np.sign(beta1 * m + (1 - beta1) * g)
    state["m"] = beta2 * m + (1 - beta2) * g
    return p - lr * (update + wd * p)


RULES = {"SGD": sgd, "Adam": adam, "AdamW": adamw, "RMSProp": rmsprop, "Adagrad": adagrad, "Adamax": adamax,
         "NAdam": nadam, "RAdam": radam, "Lion": lion}
